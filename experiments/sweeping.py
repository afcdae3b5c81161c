"""A sweep is data: a base config plus a list of flat override dicts, one per point.

A sweep file (``configs/sweeps/<name>.py``) defines two functions:

* ``get_config(arg=None)`` — the sweep's base config, built with :func:`sweep_config`: a
  complete run config (``configs/<scheme>.py`` at the preset ``arg``, then the sweep's *shared*
  settings), with ``workdir`` meaning the sweep's root folder, plus one extra block ``sweep``:
  ``name``, ``seeds``, the ``schemes`` / ``tasks`` / ``learning_rates`` filters and axes
  (comma-separated strings, so ``--config.sweep.schemes=rope,alibi`` narrows a sweep), the
  ``configs`` package of per-scheme files and the ``shared`` settings. Presets are those of
  ``configs/base.py``: ``smoke`` (tests), default (a 2-core CPU), ``paper``.
* ``get_sweep(config)`` — the points: a list of flat override dicts such as
  ``{"scheme": "rope", "task.name": "parity_check", "seed": 1}``, in a deterministic order.

Resolving point ``i`` (:func:`resolve`) gives a plain run config, the same one
``python -m experiments.run --config=configs/<scheme>.py:<preset> --config.<key>=<value> ...``
would give (so its config hash is the same too):

1. ``"scheme": S`` swaps the whole scheme: the config becomes ``configs/S.py:<preset>`` (or
   ``configs/base.py`` with ``scheme=S`` where no such file exists yet; ``configs/lm/...`` for
   the language-modelling sweep, see ``sweep.configs``), and the sweep's shared settings are
   applied to it again. Every scheme has its own encoding fields, so setting
   ``encoding.name`` alone would leave the old scheme's fields behind; a point that does so is
   an error telling you to use ``scheme``.
2. The point's other keys, e.g. ``task.name``, ``seed``, ``train.learning_rate``,
   ``encoding.max_len`` (checked against the swapped-in encoding block).
3. Command-line overrides (``--config.x=y``) last: they win over the sweep's values. Those under
   ``sweep.`` change which points exist (they were applied before ``get_sweep``) and
   ``workdir`` changes the root.

A key that names no config field is an error naming the key and the point. The point's workdir is
``<root>/<scheme>-<task>[-<other keys>]-seed<seed>``, a function of the resolved values of the
point's keys only, so a restarted sweep finds its finished points; two points with the same
folder are an error.

Running them (:func:`run_points`, behind ``python -m experiments.sweep``) skips a point whose
workdir has a ``DONE`` for the same config hash, and lets ``train_and_evaluate`` resume the others
from their checkpoints; :func:`commands` gives the ``experiments.run --sweep_index`` lines.
Each point runs under its workdir's lock (posenc/workdir_lock.py), and a point whose lock another
process holds is passed over ("running elsewhere"): so several sweep processes given the same
root (on one machine, or on several hosts over shared storage) each take the next point that is
neither finished nor locked, and no point runs twice.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import itertools
import os
import re
import shlex
import sys
import time
import traceback
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import ml_collections

from posenc import encodings, tasks, workdir_lock
from posenc.errors import ConfigError

SCHEME_KEY = "scheme"
CHOMSKY_LEVELS = ("R", "DCF", "CS")
# Names the language-modelling task may land under (the first present is used).
LM_TASK_NAMES = ("lm", "language_modelling", "language_modeling", "byte_lm")

Point = Mapping[str, Any]


# ----------------------------------------------------------------------------- building sweeps


def scheme_config(scheme: str, preset: str, package: str = "configs") -> ml_collections.ConfigDict:
  """``<package>/<scheme>.py:<preset>`` (e.g. ``configs/rope.py``, ``configs/lm/rope.py``).

  A scheme without its own file there gets ``<package>/base.py``'s
  ``get_config(preset, scheme=scheme)``, so new schemes join sweeps before their config file.
  """
  encodings.get(scheme)  # an unknown scheme: a clear error listing the known ones
  try:
    module = importlib.import_module(f"{package}.{scheme}")
  except ModuleNotFoundError as e:
    if e.name != f"{package}.{scheme}":
      raise
    base = importlib.import_module(f"{package}.base")
    return base.get_config(preset, scheme=scheme)
  return module.get_config(preset)


def _unflatten(flat: Mapping[str, Any]) -> dict:
  out: dict = {}
  for key, value in flat.items():
    node = out
    *path, last = key.split(".")
    for part in path:
      node = node.setdefault(part, {})
    node[last] = value
  return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (ConfigDicts too)."""
  out = {}
  for key, value in d.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def set_field(config: ml_collections.ConfigDict, key: str, value: Any, *, where: str) -> None:
  """Sets dotted ``key``; a key naming no field, or a value of the wrong type, is a ConfigError."""
  node = config
  *path, last = key.split(".")
  for i, part in enumerate(path):
    parent = ".".join(path[:i]) or "the config"
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(key, f"no such config field ({where}); {parent} is a value, not a block")
    if part not in node:
      raise ConfigError(key, f"no such config field ({where}); "
                        f"{parent} has: {', '.join(sorted(node.keys()))}")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or last not in node:
    known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
    hint = f"; {'.'.join(path) or 'the config'} has: {known}" if known else ""
    if path and path[0] == "encoding":
      hint += f" (scheme {config.encoding.name!r})"
    raise ConfigError(key, f"no such config field ({where}){hint}")
  if isinstance(node[last], ml_collections.ConfigDict):
    raise ConfigError(key, f"is a block, not a field ({where}); set its fields, e.g. {key}.<field>")
  try:
    node[last] = value
  except TypeError as e:
    raise ConfigError(key, f"bad value {value!r} ({where}): {e}") from None


def sweep_config(arg: str | None, *, name: str, shared: Mapping[str, Any],
                 scheme: str = "sinusoidal", seeds: int = 1, schemes: str = "",
                 tasks: str = "", learning_rates: str = "",
                 configs: str = "configs") -> ml_collections.ConfigDict:
  """A sweep's base config: ``configs/<scheme>.py:<arg>`` + ``shared`` + a ``sweep`` block.

  Args:
    arg: the preset (``None``: default).
    name: the sweep's name; the default root is ``runs/sweeps/<name>-<preset>``.
    shared: flat overrides applied to every point (again after a scheme swap).
    scheme: the scheme of the base config (points normally set their own).
    seeds: seeds ``0..seeds-1`` per point; ``--config.sweep.seeds=N`` changes it.
    schemes, tasks: comma-separated filters ("" = all that apply), overridable likewise.
    learning_rates: comma-separated values for a learning-rate axis ("" = no axis: the
      config's own ``train.learning_rate``).
    configs: the package of the per-scheme config files a ``scheme`` point loads
      (``configs``; ``configs.lm`` for language modelling).
  """
  from configs import base
  preset = arg or "default"
  if preset not in base.PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(base.PRESETS)} "
                     f"(e.g. --config=configs/sweeps/{name}.py:smoke)")
  c = scheme_config(scheme, preset, configs)
  for key, value in shared.items():
    set_field(c, key, value, where=f"sweep {name!r} shared settings")
  c.workdir = os.path.join("runs", "sweeps", f"{name}-{preset}")
  c.sweep = ml_collections.ConfigDict({
      "name": name, "seeds": seeds, "schemes": schemes, "tasks": tasks,
      "learning_rates": learning_rates, "configs": configs,
      "shared": _unflatten(dict(shared))})
  return c


def selected(field: str, value: str, available: Sequence[str], everything: Sequence[str],
             why: str) -> list[str]:
  """Parses a comma-separated filter against ``available`` (``""``: all of them).

  The result keeps ``available``'s order whatever the filter's, so a point's index does not
  depend on how the filter was typed.
  """
  if not value.strip():
    return list(available)
  chosen = set()
  for item in (v.strip() for v in value.split(",")):
    if not item:
      continue
    if item not in everything:
      raise ConfigError(field, f"unknown {item!r}; choose from: {', '.join(everything)}")
    if item not in available:
      raise ConfigError(field, f"{item!r} {why}; this sweep takes: {', '.join(available)}")
    chosen.add(item)
  return [a for a in available if a in chosen]


def schemes_for(mode: str, config: ml_collections.ConfigDict) -> list[str]:
  """Every scheme valid in ``mode`` ("encoder" or "decoder"), discovered, then filtered."""
  everything = encodings.names()
  valid = [n for n in everything if mode in encodings.get(n).MODES]
  return selected("config.sweep.schemes", config.sweep.schemes, valid, everything,
                  f"is not valid in an {mode}")


def tasks_of_levels(config: ml_collections.ConfigDict, levels: Sequence[str],
                    what: str = "a Chomsky-hierarchy task") -> list[str]:
  """The tasks whose ``level`` is in ``levels``, discovered, then filtered by ``sweep.tasks``."""
  reg = tasks.registry()
  valid = [n for n in sorted(reg) if reg[n].level in levels]
  return selected("config.sweep.tasks", config.sweep.tasks, valid, sorted(reg), f"is not {what}")


def chomsky_tasks(config: ml_collections.ConfigDict) -> list[str]:
  """The Chomsky-hierarchy tasks (levels R, DCF, CS), discovered, then filtered."""
  return tasks_of_levels(config, CHOMSKY_LEVELS)


def lm_task() -> str | None:
  """The language-modelling task's name, or None while it has not landed."""
  known = tasks.names()
  return next((n for n in LM_TASK_NAMES if n in known), None)


def learning_rates(config: ml_collections.ConfigDict) -> list[float]:
  """``config.sweep.learning_rates`` parsed ("" gives [], i.e. no learning-rate axis)."""
  out = []
  for item in (v.strip() for v in config.sweep.learning_rates.split(",")):
    if item:
      try:
        out.append(float(item))
      except ValueError:
        raise ConfigError("config.sweep.learning_rates",
                          f"{item!r} is not a number; give e.g. 1e-4,3e-4") from None
  return out


def grid(axes: Mapping[str, Iterable[Any]],
         first: Sequence[str] = (SCHEME_KEY, "task.name")) -> list[dict[str, Any]]:
  """The product of ``axes``, the *last* axis varying fastest; keys may be dotted.

  With axes ``{"seed": [0, 1], "task.name": [...], "scheme": [...]}`` every scheme on the first
  task with seed 0 comes first, so a sweep stopped early has already covered a full table. The
  keys of each point are put in reading order: ``first``, then the rest.
  """
  keys = list(axes)
  out = []
  for values in itertools.product(*(list(v) for v in axes.values())):
    point = dict(zip(keys, values))
    out.append({**{k: point[k] for k in first if k in point},
                **{k: v for k, v in point.items() if k not in first}})
  return out


# ----------------------------------------------------------------------------- resolving points


def load_module(path: str) -> ModuleType:
  """Imports a sweep file by path (``configs/sweeps/chomsky.py``, preset suffix allowed)."""
  path = path.split(":", 1)[0]
  if not os.path.isfile(path):
    raise ConfigError("--config", f"no sweep file {path!r}")
  name = "_sweep_" + re.sub(r"\W", "_", os.path.abspath(path))
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sys.modules[name] = module
  return module


def is_sweep_config(config: ml_collections.ConfigDict) -> bool:
  return "sweep" in config


def _slug(value: Any) -> str:
  return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(value)).strip("_") or "x"


def point_name(config: ml_collections.ConfigDict, point: Point) -> str:
  """``<scheme>-<task>[-<field><value>...]-seed<seed>`` from the resolved values of the point's keys."""
  parts = [config.encoding.name, config.task.name]
  resolved = flatten(config)
  for key in sorted(point):
    if key in (SCHEME_KEY, "task.name", "seed"):
      continue
    parts.append(_slug(f"{key.split('.')[-1]}{resolved[key]}"))
  parts.append(f"seed{config.seed}")
  return "-".join(_slug(p) for p in parts)


def check_point(point: Any, index: int) -> None:
  """Types and the one forbidden key; field names are checked when the point is applied."""
  if not isinstance(point, Mapping):
    raise ConfigError(f"sweep point {index}", f"must be a dict of overrides, got {type(point).__name__}")
  for key in point:
    if not isinstance(key, str) or not key:
      raise ConfigError(f"sweep point {index}", f"bad key {key!r}")
    if key == "encoding.name":
      raise ConfigError(key, f"sweep point {index} sets encoding.name; use the key "
                        f"{SCHEME_KEY!r}, which swaps the whole encoding block")
    if key == "workdir" or key.startswith("sweep.") or key == "sweep":
      raise ConfigError(key, f"sweep point {index}: cannot be set per point")


def resolve(config: ml_collections.ConfigDict, point: Point, index: int = 0,
            cli_overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """Point ``index`` of the sweep whose base is ``config``, as a plain run config (see module doc).

  ``config`` may already carry the command-line overrides; ``cli_overrides`` (flat, as
  ``config_flags.get_override_values`` gives them) are applied again last so that they win.
  """
  check_point(point, index)
  where = f"sweep point {index}"
  base = copy.deepcopy(config)
  base.unlock()
  root = base.workdir
  if SCHEME_KEY in point:
    c = scheme_config(point[SCHEME_KEY], base.preset, base.sweep.configs)
    for key, value in flatten(base.sweep.shared).items():
      set_field(c, key, value, where=f"sweep {base.sweep.name!r} shared settings")
  else:
    c = base
    del c["sweep"]
  for key, value in point.items():
    if key != SCHEME_KEY:
      set_field(c, key, value, where=where)
  for key, value in (cli_overrides or {}).items():
    if key == "workdir" or key == "sweep" or key.startswith("sweep."):
      continue  # already in effect: they chose the root and the points
    if key.split(".")[0] == "encoding" and SCHEME_KEY in point and not _has_field(c, key):
      raise ConfigError(f"--config.{key}", f"sweep point {index} uses scheme "
                        f"{c.encoding.name!r}, which has no such field; put scheme-specific "
                        "settings in the sweep's points, or run configs/<scheme>.py directly")
    set_field(c, key, value, where=f"--config.{key}")
  c.workdir = os.path.join(root, point_name(c, point))
  return c


def _has_field(c: ml_collections.ConfigDict, key: str) -> bool:
  node = c
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def points(module: ModuleType, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """``module.get_sweep(config)``, checked to be a list of dicts."""
  if not hasattr(module, "get_sweep"):
    raise ConfigError("--config", f"{module.__file__} defines no get_sweep(config); "
                      "it is not a sweep file")
  pts = module.get_sweep(config)
  if not isinstance(pts, (list, tuple)):
    raise ConfigError("get_sweep", f"must return a list of dicts, got {type(pts).__name__}")
  for i, p in enumerate(pts):
    check_point(p, i)
  return [dict(p) for p in pts]


def resolve_all(module: ModuleType, config: ml_collections.ConfigDict,
                cli_overrides: Mapping[str, Any] | None = None
                ) -> list[tuple[dict[str, Any], ml_collections.ConfigDict]]:
  """Every point with its resolved config; bad keys and clashing workdirs are errors."""
  out = [(p, resolve(config, p, i, cli_overrides)) for i, p in enumerate(points(module, config))]
  seen: dict[str, int] = {}
  for i, (_, c) in enumerate(out):
    if c.workdir in seen:
      raise ConfigError("get_sweep", f"points {seen[c.workdir]} and {i} resolve to the same "
                        f"workdir {c.workdir!r}; they are the same run (a command-line override "
                        "may have made them equal)")
    seen[c.workdir] = i
  return out


def describe(point: Point) -> str:
  """``scheme=rope task.name=parity_check seed=1``."""
  return " ".join(f"{k}={v}" for k, v in point.items())


# ----------------------------------------------------------------------------- running


def parse_shard(text: str | None) -> tuple[int, int]:
  """``"i/n"`` -> ``(i, n)``; None -> ``(0, 1)``."""
  if not text:
    return 0, 1
  try:
    i, n = (int(x) for x in text.split("/"))
  except ValueError:
    raise ConfigError("--shard", f"{text!r} is not i/n, e.g. --shard=0/4") from None
  if not (n >= 1 and 0 <= i < n):
    raise ConfigError("--shard", f"{text!r}: need n >= 1 and 0 <= i < n")
  return i, n


def _override_args(overrides: dict, root: str | None) -> list[str]:
  """``--config.<key>=<value>`` for each override config_flags applied (``--root`` as workdir)."""
  out = []
  for key, value in overrides.items():
    if key == "workdir" and root:
      continue
    out.append(f"--config.{key}={value}")
  if root:
    out.append(f"--config.workdir={root}")
  return out


def commands(config_arg: str, preset: str, n: int, overrides: dict, root: str | None) -> list[str]:
  """One ``experiments.run`` command line per point.

  ``config_arg`` is the ``--config`` value as given (the preset is made explicit); ``overrides``
  the flat ``--config.*`` overrides, carried so that the indices mean the same points.
  """
  config_arg = config_arg if ":" in config_arg else f"{config_arg}:{preset}"
  extra = " ".join(shlex.quote(a) for a in _override_args(overrides, root))
  config = shlex.quote(f"--config={config_arg}")
  return [f"python -m experiments.run {config} --sweep_index={i}" + (f" {extra}" if extra else "")
          for i in range(n)]


def finished(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config.workdir`` holds a finished run of exactly this config.

  Its ``DONE`` holds the config's hash, or its ``results.json`` carries it (a committed point:
  results kept in git without checkpoints or ``DONE``; see :mod:`experiments.store`).
  """
  from experiments import store
  from posenc import train
  config_hash = train.config_hash(config)
  if store.committed(config.workdir, config_hash):
    return True
  done = os.path.join(config.workdir, "DONE")
  if not (os.path.exists(done) and os.path.exists(os.path.join(config.workdir, "results.json"))):
    return False
  with open(done) as f:
    return f.read().strip() == config_hash


def shard_indices(n: int, shard: tuple[int, int] = (0, 1)) -> list[int]:
  """The indices of ``n`` points that shard ``(i, k)`` runs: i, i+k, i+2k, ..."""
  return [j for j in range(n) if j % shard[1] == shard[0]]


def unrunnable(resolved: Sequence[tuple[dict[str, Any], ml_collections.ConfigDict]],
               indices: Iterable[int]) -> list[tuple[int, str]]:
  """``(index, error)`` for each unfinished point that ``posenc.train.setup`` refuses.

  Run before a local sweep starts, so that a scheme that cannot represent the evaluated lengths
  (say) is reported at once, not hours in.
  """
  from posenc import train
  problems = []
  for i in indices:
    config = resolved[i][1]
    if finished(config):
      continue
    try:
      train.setup(config)
    except ConfigError as e:
      problems.append((i, str(e)))
  return problems


def enable_compilation_cache(path: str) -> None:
  """Points JAX's persistent compilation cache at ``path`` ('none': leave it off)."""
  if path.lower() == "none":
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))


def _fmt(v: float | None) -> str:
  return "n/a" if v is None else f"{v:.3f}"


def run_points(resolved: Sequence[tuple[dict[str, Any], ml_collections.ConfigDict]],
               shard: tuple[int, int] = (0, 1), *, stop_on_error: bool = False,
               out: TextIO | None = None, log: Callable[[str], None] = print,
               prune: bool = False) -> dict[str, list[int]]:
  """Runs the points in order (this shard's share); returns indices run / skipped / failed.

  ``resolved`` is :func:`resolve_all`'s list; the sweep's own lines go to
  ``out`` (default stdout), each run's log lines to ``log``. With ``prune``, each finished
  point (run now or before) loses its checkpoints and TensorBoard events
  (:func:`experiments.store.prune`; the sweep config's ``sweep.prune_finished``).
  """
  import jax
  from experiments import store
  from posenc import train

  def say(text: str) -> None:
    print(text, file=out or sys.stdout, flush=True)

  n = len(resolved)
  width = len(str(n))
  status: dict[str, list[int]] = {"ran": [], "skipped": [], "elsewhere": [], "failed": []}
  mine = shard_indices(n, shard)
  for i in mine:
    point, config = resolved[i]
    tag = f"sweep [{i + 1:>{width}}/{n}]"
    decision, lock, holder = claim(config)
    if decision == "finished":
      status["skipped"].append(i)
      say(f"{tag} skip (finished): {describe(point)} -> {config.workdir}")
      if prune and jax.process_index() == 0:
        store.prune(config.workdir, train.config_hash(config))
      continue
    if decision == "elsewhere":
      status["elsewhere"].append(i)
      say(f"{tag} skip (running elsewhere: {workdir_lock.describe(holder)}): {describe(point)} "
          f"-> {config.workdir}")
      continue
    with lock:
      say(f"{tag} run: {describe(point)} -> {config.workdir}")
      t0 = time.perf_counter()
      try:
        results = train.train_and_evaluate(config, log=log)
      except Exception as e:  # noqa: BLE001 — one broken point must not end an overnight sweep
        status["failed"].append(i)
        if not isinstance(e, (ConfigError, train.TrainingDiverged)):
          traceback.print_exc(file=out or sys.stdout)
        say(f"{tag} FAILED after {time.perf_counter() - t0:.0f}s: {type(e).__name__}: {e}")
        if stop_on_error:
          break
        continue
      finally:
        jax.clear_caches()  # one process runs many programs; keep its memory flat
    status["ran"].append(i)
    if prune and jax.process_index() == 0:
      store.prune(config.workdir, train.config_hash(config))
    say(f"{tag} done in {time.perf_counter() - t0:.0f}s: {results['scheme']} on {results['task']} "
        f"seed {results['seed']}: in-range {_fmt(results['in_range_score'])}, "
        f"beyond {_fmt(results['out_of_range_score'])}")
  failed, elsewhere = status["failed"], status["elsewhere"]
  say(f"sweep: {len(mine)} points{f' (shard {shard[0]}/{shard[1]} of {n})' if shard[1] > 1 else ''}: "
      f"{len(status['ran'])} run, {len(status['skipped'])} skipped (finished), "
      + (f"{len(elsewhere)} running elsewhere (run this command again after those workers end "
         "to pick up any they left unfinished), " if elsewhere else "")
      + f"{len(failed)} failed" + (f": indices {', '.join(map(str, failed))}" if failed else ""))
  return status


_CLAIMS = ("run", "finished", "elsewhere")


def claim(config: ml_collections.ConfigDict
          ) -> tuple[str, "workdir_lock.WorkdirLock | None", dict[str, Any] | None]:
  """Whether this process runs the point of ``config``: ``(decision, lock, holder)``.

  ``"finished"``: its workdir holds a finished run of this config. ``"elsewhere"``: another
  process holds its workdir's lock (``holder``: its details). ``"run"``: this process now holds
  ``lock`` (release it when the point ends). Finished is checked again under the lock, since
  another worker may have finished the point between the first look and the lock.
  Multi-host (every process runs the same point): process 0 decides and locks for all.
  """
  import jax
  decision, lock, holder = "run", None, None
  if jax.process_index() == 0:
    if finished(config):
      decision = "finished"
    else:
      try:
        lock = workdir_lock.acquire(config.workdir)
      except workdir_lock.WorkdirLocked as e:
        decision, holder = "elsewhere", e.holder
      else:
        if finished(config):
          lock.release()
          decision, lock = "finished", None
  decision = _CLAIMS[workdir_lock.agree(_CLAIMS.index(decision))]
  if decision == "run" and lock is None:  # a process other than 0, or locking turned off
    lock = workdir_lock.WorkdirLock(config.workdir, None)
  return decision, lock, holder
