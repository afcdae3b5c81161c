"""Reading a run's folder, and the text report of what its checkpoint holds.

Everything here reads only the workdir's own files — the orbax checkpoint (metadata and arrays,
restored without a target), ``config.json``, ``metrics.jsonl``, ``results.json`` and ``DONE`` —
and needs none of the run's code, so the report works for a run whose scheme, task or config file
no longer exists (or has changed) in this checkout. Nothing here writes a file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from typing import Any, Iterator

import numpy as np


class InspectError(Exception):
  """A problem with the command line or the workdir: printed as one line, exit status 2."""


def first_line(e: BaseException) -> str:
  """``"TypeName: first line of the message"`` (at most 200 characters of it)."""
  text = next((l.strip() for l in str(e).splitlines() if l.strip()), "")
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def config_get(config: dict | None, path: str, default: Any = None) -> Any:
  """``config["a"]["b"]`` for ``path="a.b"`` in a saved ``config.json``; ``default`` if absent."""
  node: Any = config
  for part in path.split("."):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


# ----------------------------------------------------------------------------- run files


def read_json(path: str) -> Any:
  """The JSON content of ``path``; None if it does not exist or cannot be parsed."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_json_dict(path: str) -> dict | None:
  """:func:`read_json` when the file holds a JSON object, else None."""
  value = read_json(path)
  return value if isinstance(value, dict) else None


def read_metrics(workdir: str) -> list[dict]:
  """``metrics.jsonl``'s rows (a line cut by a kill is skipped)."""
  rows = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict):
          rows.append(row)
  except OSError:
    pass
  return rows


# ----------------------------------------------------------------------------- checkpoints

_saved_stderr_fd: int | None = None  # fd 2 as it was, while a failing restore keeps it silenced


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
  """Silences fd 2 while orbax reads arrays.

  A damaged checkpoint makes tensorstore's callback threads print "Event loop is closed"
  tracebacks for a while after the failing restore; on failure fd 2 therefore stays silenced
  until :func:`restore_stderr` (or the end of the process), and an error line goes to
  :func:`stderr_fd`.
  """
  global _saved_stderr_fd
  sys.stderr.flush()
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os.close(devnull)
  try:
    yield
  except BaseException:
    _saved_stderr_fd = saved
    raise
  os.dup2(saved, 2)
  os.close(saved)


def stderr_fd() -> int:
  """Where an error line should go: the real stderr, even while a failed restore silences fd 2."""
  return _saved_stderr_fd if _saved_stderr_fd is not None else sys.stderr.fileno()


def restore_stderr() -> None:
  """Gives fd 2 back after a failed restore silenced it (a no-op otherwise)."""
  global _saved_stderr_fd
  if _saved_stderr_fd is not None:
    os.dup2(_saved_stderr_fd, 2)
    os.close(_saved_stderr_fd)
    _saved_stderr_fd = None


def open_checkpoints(workdir: str):
  """A read-only orbax manager on ``WORKDIR/checkpoints`` and its finished steps."""
  if not os.path.exists(workdir):
    raise InspectError(f"{workdir!r} does not exist; pass a run's folder (the --workdir of "
                       "experiments.run)")
  if not os.path.isdir(workdir):
    raise InspectError(f"{workdir!r} is a file, not a run's folder; pass the --workdir of a run")
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  unfinished = []
  if os.path.isdir(directory):
    unfinished = sorted(n for n in os.listdir(directory) if ".orbax-checkpoint-tmp" in n)
  import orbax.checkpoint as ocp
  steps: list[int] = []
  mngr = None
  if os.path.isdir(directory):
    mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                 item_handlers=ocp.StandardCheckpointHandler())
    steps = sorted(mngr.all_steps())
  if not steps:
    extra = (f" (only unfinished {', '.join(unfinished)}: a run killed while saving)"
             if unfinished else "")
    raise InspectError(f"{workdir!r} holds no checkpoints (no finished step in {directory}){extra}; "
                       "a run saves its first one after checkpoint.every_steps steps")
  return mngr, steps


def load_checkpoint(mngr, step: int, steps: list[int], workdir: str) -> tuple[dict, Any]:
  """``(state, metadata)`` of ``step``, restored without the run's code (arrays on the CPU)."""
  import jax
  import orbax.checkpoint as ocp

  others = [s for s in steps if s != step]
  hint = f"; other steps: {', '.join(map(str, others))} (pick one with --step)" if others else ""
  try:
    with _quiet_stderr():
      meta = mngr.item_metadata(step)
      tree = getattr(meta, "tree", meta)
      if not isinstance(tree, dict) or "params" not in tree:
        raise ValueError("its metadata has no 'params' entry")
      cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
      is_array = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
      # Restoring to CPU shapes read from the metadata: no code of the run is needed, and a
      # checkpoint written on an accelerator opens on a laptop.
      target = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=cpu), tree,
          is_leaf=is_array)
      state = mngr.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # noqa: BLE001 — any failure to read is "damaged"
    raise InspectError(f"checkpoint at step {step} in {workdir!r} is damaged or unreadable "
                       f"({first_line(e)}){hint}") from None
  return state, tree


def read_state(workdir: str, step: int | None = None) -> tuple[int, list[int], dict]:
  """``(step, all finished steps, state)`` of ``step`` (default: the latest), its parameters as
  numpy arrays. Raises :class:`InspectError` for a missing step, folder or checkpoint."""
  mngr, steps = open_checkpoints(workdir)
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise InspectError(f"--step {step}: no checkpoint at step {step} in {workdir!r}; available: "
                       f"{', '.join(map(str, steps))}")
  state, _ = load_checkpoint(mngr, step, steps, workdir)
  state = {k: v for k, v in state.items()}
  state["params"] = _numpy_tree(state["params"])
  return step, steps, state


def _numpy_tree(tree):
  if isinstance(tree, dict):
    return {k: _numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


# ----------------------------------------------------------------------------- text report


def flat_params(params: dict) -> list[tuple[str, np.ndarray]]:
  """``[(path, array)]`` in path order (``layer0_query/kernel``)."""
  out = []

  def walk(node, prefix):
    if isinstance(node, dict):
      for k in sorted(node):
        walk(node[k], f"{prefix}{k}/")
    elif node is not None:
      out.append((prefix[:-1], np.asarray(node)))

  walk(params, "")
  return out


def _fmt(v: Any, digits: int = 4) -> str:
  if v is None:
    return "n/a"
  if isinstance(v, float):
    return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
  return str(v)


def param_table(params: dict) -> tuple[list[str], int]:
  """The parameter tree as text lines, and the total number of parameters."""
  rows = []
  total = 0
  for path, a in flat_params(params):
    count = int(a.size)
    total += count
    try:  # bfloat16 (ml_dtypes) is not an np.number subtype, but converts
      f = a.astype(np.float64) if a.size else None
    except (TypeError, ValueError):
      f = None
    mean = float(f.mean()) if f is not None else float("nan")
    std = float(f.std()) if f is not None else float("nan")
    rows.append((path, str(tuple(a.shape)), str(a.dtype), f"{count:,}", f"{mean:+.4g}", f"{std:.4g}"))
  head = ("path", "shape", "dtype", "count", "mean", "std")
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
  line = lambda r: "  " + "  ".join(
      (c.ljust(w) if i < 3 else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  return [line(head)] + [line(r) for r in rows], total


def describe(workdir: str, step: int, steps: list[int], state: dict, config: dict | None,
             metrics: list[dict], results: dict | None) -> list[str]:
  """The text report: the run, its config, its metrics and results, every parameter array."""
  out = [f"workdir: {os.path.abspath(workdir)}",
         f"checkpoints: steps {', '.join(map(str, steps))}; showing step {step}"
         + (" (the latest)" if step == steps[-1] else "")]
  if config is None:
    out.append("config: config.json is missing or unreadable")
  else:
    g = lambda p: config_get(config, p)
    mode = "causal decoder" if g("model.causal") else "encoder"
    out += [
        f"run: {g('encoding.name')} on {g('task.name')} ({mode}; {g('preset')} preset, seed {g('seed')})",
        f"model: {g('model.num_layers')} layers, d_model {g('model.d_model')}, {g('model.num_heads')} "
        f"heads, d_ff {g('model.d_ff')}, dropout {g('model.dropout')}, "
        f"{'pre' if g('model.pre_ln') else 'post'}-LN, {g('model.dtype')}",
        "encoding: " + ", ".join(f"{k}={v}" for k, v in sorted((g("encoding") or {}).items())),
        f"training: {g('train.steps')} steps, batch {g('train.batch_size')}, learning rate "
        f"{g('train.learning_rate')} ({g('train.schedule')}), input lengths "
        f"{g('task.train_min_length')}–{g('task.train_max_length')}, positions "
        f"{g('positions.kind')}",
        f"evaluation: input lengths {g('eval.min_length')}–{g('eval.max_length')}",
    ]
    if g("init.from_workdir"):
      out.append(f"warm start: from {g('init.from_workdir')} (step {g('init.step') or 'latest'})")
  if metrics:
    last = metrics[-1]
    logged = [r.get("step") for r in metrics if isinstance(r.get("step"), int)]
    out.append(f"metrics: {len(metrics)} rows logged, steps {min(logged, default='?')}–"
               f"{max(logged, default='?')}; last (step {last.get('step')}): "
               + ", ".join(f"{k} {_fmt(last[k])}" for k in ("loss", "accuracy", "token_accuracy",
                                                             "grad_norm", "ode_steps") if k in last))
  else:
    out.append("metrics: metrics.jsonl is missing or empty")
  if results:
    out.append(f"results: in-range score {_fmt(results.get('in_range_score'), 3)}, beyond training "
               f"{_fmt(results.get('out_of_range_score'), 3)} (after {results.get('steps')} steps"
               + (", DONE" if os.path.exists(os.path.join(workdir, "DONE")) else ", no DONE") + ")")
  else:
    out.append("results: none yet (results.json is written after the final evaluation)")
  saved_step = state.get("step")
  lines, total = param_table(state["params"])
  opt = [np.asarray(x) for x in _leaves(state.get("opt_state"))]
  out.append(f"parameters at step {int(np.asarray(saved_step)) if saved_step is not None else step}:")
  out += lines
  out.append(f"total: {total:,} parameters in {len(lines) - 1} arrays"
             + (f"; optimizer state: {sum(int(a.size) for a in opt):,} numbers in {len(opt)} arrays"
                if opt else ""))
  return out


def _leaves(tree: Any) -> list:
  if tree is None:
    return []
  if isinstance(tree, dict):
    return [x for k in sorted(tree) for x in _leaves(tree[k])]
  if isinstance(tree, (list, tuple)):
    return [x for v in tree for x in _leaves(v)]
  return [tree]
