"""A sweep is data: a base config plus a list of flat override dicts, one per point.

This module resolves a sweep's points into run configs and runs them; it never builds a sweep.
Sweep files (``configs/sweeps/<name>.py``) are data one layer down: they import from
``configs`` and ``posenc``, not from here (format and an example: :mod:`configs.sweeps`).
A sweep file defines two functions:

* ``get_config(arg=None)`` — the sweep's base config, built with
  :func:`configs.sweeps.sweep_config`: a complete run config (``configs/<scheme>.py`` at the
  preset ``arg``, then the sweep's *shared* settings), with ``workdir`` meaning the sweep's root
  folder, plus one extra block ``sweep``: ``name``, ``seeds``, the ``schemes`` / ``tasks`` /
  ``learning_rates`` filters and axes (comma-separated strings, so
  ``--config.sweep.schemes=rope,alibi`` narrows a sweep), the ``configs`` package of per-scheme
  files and the ``shared`` settings. A file may add its own fields to the block (the atlas:
  ``prune_finished``). Presets are those of ``configs/base.py``: ``smoke`` (tests), default (a
  2-core CPU), ``paper``.
* ``get_sweep(config)`` — the points: a list of flat override dicts such as
  ``{"scheme": "rope", "task.name": "parity_check", "seed": 1}``, in a deterministic order,
  listed with :mod:`posenc.sweeps` (schemes discovered by mode, tasks by level, the filters of
  the ``sweep`` block, :func:`posenc.sweeps.grid`), so new schemes and tasks join by themselves.

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
import importlib.util
import os
import re
import shlex
import sys
import time
import traceback
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Sequence, TextIO

import ml_collections

from configs.sweeps import scheme_config
from posenc import workdir_lock
from posenc.errors import ConfigError
from posenc.sweeps import SCHEME_KEY, Point, flatten, set_field


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
  """``(index, error)`` for each unfinished point that ``posenc.setup.setup`` refuses.

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


def count(n: int, noun: str, plural: str | None = None) -> str:
  """``"1 point"``, ``"3 points"``."""
  return f"{n} {noun if n == 1 else plural or noun + 's'}"


def summary(status: Mapping[str, Sequence[int]], mine: int, n: int,
            shard: tuple[int, int] = (0, 1)) -> str:
  """The last line of :func:`run_points`: how many of this worker's ``mine`` points ran, were
  finished before, were running elsewhere or failed (of ``n`` in the sweep)."""
  failed, elsewhere = status["failed"], status["elsewhere"]
  where = f" (shard {shard[0]}/{shard[1]} of {n})" if shard[1] > 1 else ""
  return (f"sweep: {count(mine, 'point')}{where}: {len(status['ran'])} run, "
          f"{len(status['skipped'])} skipped (finished), "
          + (f"{len(elsewhere)} running elsewhere (run this command again after those workers end "
             "to pick up any they left unfinished), " if elsewhere else "")
          + f"{len(failed)} failed"
          + (f": {'index' if len(failed) == 1 else 'indices'} {', '.join(map(str, failed))}"
             if failed else ""))


def _duration(seconds: float) -> str:
  if seconds < 90:
    return f"{seconds:.0f}s"
  return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def progress(spent: Sequence[float], left: int) -> str:
  """The line after each point a sweep runs: how many of this worker's points are left (those
  not finished when it started; other workers on the root may take some) and what they would
  take at this sitting's mean time per point."""
  mean = sum(spent) / len(spent)
  ran = count(len(spent), "point")
  if not left:
    return f"sweep: {ran} run in {_duration(sum(spent))}; none of this worker's points left"
  return (f"sweep: {ran} run in {_duration(sum(spent))} (mean {mean:.0f}s); {left} left, about "
          f"{_duration(mean * left)} at that mean")


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
  todo = {i for i in mine if not finished(resolved[i][1])}  # for the progress line's estimate
  spent: list[float] = []
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
    spent.append(time.perf_counter() - t0)
    say(f"{tag} done in {spent[-1]:.0f}s: {results['scheme']} on {results['task']} "
        f"seed {results['seed']}: in-range {_fmt(results['in_range_score'])}, "
        f"beyond {_fmt(results['out_of_range_score'])}")
    say(progress(spent, sum(1 for j in todo if j > i)))
  say(summary(status, len(mine), n, shard))
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
