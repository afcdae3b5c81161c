"""Inspect a run's checkpoint: its parameters, config and metrics, and (``--plots``) what it learned.

  python -m scripts.inspect_checkpoint WORKDIR [--step N] [--plots] [--out DIR] [--long_length L]

The text report reads only the workdir's own files — the orbax checkpoint (metadata and arrays,
restored without a target), ``config.json``, ``metrics.jsonl`` and ``results.json`` — so it works
even when the run's scheme, task or config file no longer exists (or has changed) in this
checkout. It prints every parameter (path, shape, dtype, count, mean, std), the total, the run's
config and a metrics summary.

``--plots`` writes PNGs into ``WORKDIR/inspect/`` (or ``--out``), one per scheme family found by
its parameter names and public functions, not by the scheme's name:

* ``position_similarity.png`` — ``cos(p_i, p_j)`` of absolute position vectors: a saved 2-D
  ``encoding/table`` (learned, hierarchical) needs no code; otherwise the scheme's ``embed`` hook
  is evaluated on a zero input at positions ``0..N`` with the saved parameters (sinusoidal,
  hierarchical beyond its table, recurrent, ...).
* ``bias_vs_distance.png`` — each head's additive logit term against ``i − j`` (schemes with a
  ``logits`` hook: ALiBi, KERPLE, Sandwich, FIRE, T5, ...; content-dependent ones with q = k = 0).
* ``rotary_frequencies.png`` — ``θ_m`` and wavelengths (schemes whose module has
  ``frequencies``: RoPE, xPos), with the scaled frequencies of the longest evaluated program.
* ``floater_trajectory.png`` and ``floater_vs_sinusoidal.png`` — FLOATER's solved positions
  (modules with ``solve``) and their similarity next to the sinusoidal table's.
* ``attention_train.png`` / ``attention_long.png`` — every layer's and head's attention for one
  sample at the longest training length and at a longer one.

A plot that needs the current code (the model rebuilt from ``config.json`` with
``posenc.train.setup``) is skipped with a one-line note when the scheme's module is missing or the
saved parameters do not fit it. A missing workdir, a workdir without checkpoints, a missing step
or a damaged checkpoint end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from typing import Any, Callable, Iterator

import numpy as np

# Plots cap the number of positions they draw (a 2048-position similarity matrix is unreadable).
MAX_POSITIONS = 1024
MAX_BIAS_DISTANCE = 512
DEFAULT_LONG_CAP = 128


class InspectError(Exception):
  """A problem with the command line or the workdir: printed as one line, exit status 2."""


class Skip(Exception):
  """A plot that cannot be made for this run; the message says why (one line)."""


class NotApplicable(Skip):
  """A plot of another scheme family (e.g. bias curves for a rotary scheme): listed, not noted."""


# ----------------------------------------------------------------------------- reading


def read_json(path: str) -> Any:
  """The JSON content of ``path``; None if it does not exist or cannot be parsed."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


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


_saved_stderr_fd: int | None = None  # fd 2 as it was, while a failing restore keeps it silenced


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
  """Silences fd 2 while orbax reads arrays.

  A damaged checkpoint makes tensorstore's callback threads print "Event loop is closed"
  tracebacks for a while after the failing restore; on failure fd 2 therefore stays silenced
  (the error line goes to the saved fd, see :func:`_print_error`) until the process ends.
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


def _restore_stderr() -> None:
  global _saved_stderr_fd
  if _saved_stderr_fd is not None:
    os.dup2(_saved_stderr_fd, 2)
    os.close(_saved_stderr_fd)
    _saved_stderr_fd = None


def _print_error(message: str) -> None:
  fd = _saved_stderr_fd if _saved_stderr_fd is not None else sys.stderr.fileno()
  sys.stderr.flush()
  os.write(fd, ("error: " + " ".join(message.split()) + "\n").encode())


def _first_line(e: BaseException) -> str:
  text = next((l.strip() for l in str(e).splitlines() if l.strip()), "")
  return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


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
                       f"({_first_line(e)}){hint}") from None
  return state, tree


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


def _get(config: dict | None, path: str, default: Any = None) -> Any:
  node: Any = config
  for part in path.split("."):
    if not isinstance(node, dict) or part not in node:
      return default
    node = node[part]
  return node


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
  """The text report."""
  out = [f"workdir: {os.path.abspath(workdir)}",
         f"checkpoints: steps {', '.join(map(str, steps))}; showing step {step}"
         + (" (the latest)" if step == steps[-1] else "")]
  if config is None:
    out.append("config: config.json is missing or unreadable")
  else:
    g = lambda p: _get(config, p)
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


# ----------------------------------------------------------------------------- plots


class Context:
  """What the plots share: the run's config, its saved parameters, and (lazily) the current code's
  view of the run (``posenc.train.setup``), or why that is unavailable."""

  def __init__(self, workdir: str, config: dict | None, params: dict, out: str, long_length: int):
    self.workdir, self.config, self.params, self.out = workdir, config, params, out
    self.long_length = long_length
    self._setup = None
    self._why_not: str | None = None

  @property
  def enc_params(self) -> dict:
    return self.params.get("encoding", {}) if isinstance(self.params, dict) else {}

  def setup(self):
    """``posenc.train.setup`` of the saved config, checked against the saved parameters."""
    if self._setup is None and self._why_not is None:
      try:
        self._setup = self._make_setup()
      except Skip as e:
        self._why_not = str(e)
      except Exception as e:  # noqa: BLE001 — any failure means "the current code cannot"
        self._why_not = f"the current code cannot rebuild this run's model ({_first_line(e)})"
    if self._why_not is not None:
      raise Skip(self._why_not)
    return self._setup

  def _make_setup(self):
    if self.config is None:
      raise Skip("config.json is missing, so the model cannot be rebuilt")
    try:
      import jax
      import jax.numpy as jnp
      import ml_collections
      from posenc import encodings, train
      from posenc.errors import ConfigError
    except ImportError as e:
      raise Skip(f"posenc is not importable here ({e})") from None
    name = _get(self.config, "encoding.name")
    if name not in encodings.names():
      raise Skip(f"scheme {name!r} is not in this checkout (no posenc/encodings/{name}.py)")
    cfg = json.loads(json.dumps(self.config))
    cfg.setdefault("init", {})["from_workdir"] = ""  # that run need not exist any more
    try:
      s = train.setup(ml_collections.ConfigDict(cfg))
    except (ConfigError, KeyError, AttributeError, TypeError, ValueError) as e:
      raise Skip(f"the current code refuses this run's config.json ({_first_line(e)})") from None
    model = s.model(s.train_bound())
    length = s.train_padded
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32), jnp.zeros((1, length), jnp.int32),
        jnp.ones((1, length), bool), train=False))["params"]
    want, have = _shapes(shapes), _shapes(self.params)
    if want != have:
      diff = sorted(set(want) ^ set(have)) or [k for k in sorted(want) if want[k] != have[k]]
      k = diff[0]
      raise Skip(f"the saved parameters do not fit the current code's model ({k}: "
                 f"{have.get(k, 'absent')} saved, {want.get(k, 'absent')} now)")
    return s

  def eval_positions(self) -> int:
    """Positions the run's longest evaluation program used (capped at MAX_POSITIONS)."""
    s = self.setup()
    return min(s.eval_bound(s.eval_buckets[-1][1]), MAX_POSITIONS)

  def train_positions(self) -> int:
    """Positions of the longest training sequence (input plus answer)."""
    from posenc import data
    s = self.setup()
    return data.total_length(s.task, s.config.task.train_max_length)

  def encoding_at(self, max_position: int):
    """The scheme's module (unbound) for a program whose positions are below ``max_position``."""
    return self.setup().model(max_position).encoding

  def apply_encoding(self, enc, fn: Callable, *args):
    """``fn(module, *args)`` with the module bound to the saved encoding parameters."""
    return enc.apply({"params": _jnp_tree(self.enc_params)}, *args, method=fn)


def _shapes(tree, prefix: str = "") -> dict[str, tuple]:
  """``{path: shape}`` of a nested mapping of arrays (or ShapeDtypeStructs, FrozenDicts)."""
  if hasattr(tree, "items"):
    out = {}
    for k, v in tree.items():
      out.update(_shapes(v, f"{prefix}{k}/"))
    return out
  return {prefix[:-1]: tuple(np.shape(tree))}


def _jnp_tree(tree):
  import jax.numpy as jnp
  if isinstance(tree, dict):
    return {k: _jnp_tree(v) for k, v in tree.items()}
  return jnp.asarray(tree)


def _module(ctx: Context):
  import importlib
  return importlib.import_module(f"posenc.encodings.{_get(ctx.config, 'encoding.name')}")


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  os.replace(tmp, path)
  _pyplot().close(fig)
  return path


def _suptitle(fig, text: str) -> None:
  """A figure title wrapped to the figure's width (narrow figures would cut it off)."""
  import textwrap
  width = max(40, int(fig.get_figwidth() * 13))
  fig.suptitle(textwrap.fill(text, width), fontsize=9)


def _cosine(vectors: np.ndarray) -> np.ndarray:
  v = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
  v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  return v @ v.T


def _similarity_panel(ax, sim: np.ndarray, title: str, marks: tuple[int, ...] = ()) -> None:
  im = ax.imshow(sim, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
  for m in marks:
    if 0 < m < len(sim):
      ax.axhline(m - 0.5, color="k", lw=0.8, ls="--")
      ax.axvline(m - 0.5, color="k", lw=0.8, ls="--")
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("position j")
  ax.set_ylabel("position i")
  ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot_position_similarity(ctx: Context) -> str:
  """``cos(p_i, p_j)`` of a saved table (no code needed) or of the ``embed`` hook's vectors."""
  plt = _pyplot()
  panels = []
  table = ctx.enc_params.get("table")
  d_model = _get(ctx.config, "model.d_model")
  if table is not None and np.ndim(table) == 2 and (d_model is None or np.shape(table)[1] == d_model):
    rows = np.asarray(table)[:MAX_POSITIONS]
    panels.append((rows, f"saved encoding/table, rows 0–{len(rows) - 1}"))
  try:
    probed = _probe_embed(ctx, skip_upto=len(panels[0][0]) if panels else 0)
    if probed is not None:
      panels.append(probed)
  except Skip as e:
    if not panels:
      raise
    print(f"note: position_similarity.png shows the saved table only: {e}")
  if not panels:
    raise NotApplicable("no absolute position vectors (no encoding/table, no embed hook)")
  try:
    marks = (ctx.train_positions(),)
  except Skip:
    marks = ()
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
  for ax, (vectors, title) in zip(axes[0], panels):
    _similarity_panel(ax, _cosine(vectors), title, marks)
  _suptitle(fig, f"{_get(ctx.config, 'encoding.name', '?')}: cosine similarity of position vectors"
               + (" (dashed: end of the training lengths)" if marks else ""))
  fig.tight_layout()
  return _save(fig, os.path.join(ctx.out, "position_similarity.png"))


def _probe_embed(ctx: Context, skip_upto: int = 0):
  """``embed(0, positions 0..N-1)`` with the saved parameters (None when it adds nothing new)."""
  import jax.numpy as jnp
  s = ctx.setup()
  n = ctx.eval_positions()
  if n <= skip_upto:  # a saved table already covers every position the run used
    return None
  enc = ctx.encoding_at(n)
  if not callable(getattr(type(enc), "embed", None)):
    if skip_upto:
      return None
    raise NotApplicable("the scheme has no embed hook (its positions act inside attention)")
  x = jnp.zeros((1, n, s.model_cfg.d_model), jnp.float32)
  pos = jnp.arange(n, dtype=jnp.int32)[None]
  vectors = np.asarray(ctx.apply_encoding(enc, lambda m, x, p: m.embed(x, p), x, pos))[0]
  if not np.any(vectors):
    raise Skip("the embed hook adds nothing to a zero input (it scales or mixes the token "
               "embedding), so it has no position vectors of its own")
  if np.allclose(vectors, vectors[:1]):
    raise Skip("the embed hook gives every position the same vector")
  return vectors, f"embed hook on a zero input, positions 0–{n - 1}"


def plot_bias_vs_distance(ctx: Context) -> str:
  """Each head's ``logits`` term against ``i − j`` (q = k = 0), one panel per distinct layer."""
  import jax.numpy as jnp
  s = ctx.setup()
  cls = type(ctx.encoding_at(1))
  if not callable(getattr(cls, "logits", None)):
    raise NotApplicable("the scheme has no logits hook (no additive attention bias)")
  plt = _pyplot()
  # The full [size, size] term is computed (hooks are written for Lq = Lk) and one query row kept.
  n = min(ctx.eval_positions(), MAX_BIAS_DISTANCE)
  causal = s.causal
  size = n if causal else 2 * n - 1
  query = n - 1  # the last query (decoder) or the middle one (encoder)
  enc = ctx.encoding_at(size)
  heads, dh = s.model_cfg.num_heads, s.model_cfg.d_model // s.model_cfg.num_heads
  pos = jnp.arange(size, dtype=jnp.int32)[None]
  zeros = jnp.zeros((1, size, heads, dh), jnp.float32)
  per_layer = []
  for layer in range(s.model_cfg.num_layers):
    out = ctx.apply_encoding(enc, lambda m, q, k, p: m.logits(q, k, p, p, layer), zeros, zeros, pos)
    per_layer.append(np.broadcast_to(np.asarray(out, np.float64), (1, heads, size, size))[0, :, query])
  distinct = [0] + [l for l in range(1, len(per_layer))
                    if not np.allclose(per_layer[l], per_layer[0])]
  distance = query - np.arange(size)  # i − j
  keep = distance >= 0 if causal else np.ones(size, bool)
  fig, axes = plt.subplots(1, len(distinct), figsize=(6 * len(distinct), 4), squeeze=False)
  train_len = ctx.train_positions()
  for ax, layer in zip(axes[0], distinct):
    for h in range(heads):
      ax.plot(distance[keep], per_layer[layer][h][keep], lw=1, label=f"head {h}")
    for x in (train_len - 1, -(train_len - 1)) if not causal else (train_len - 1,):
      ax.axvline(x, color="k", ls="--", lw=0.8)
    shared = " (all layers)" if len(distinct) == 1 else f" (layer {layer})"
    ax.set_title(f"bias vs distance{shared}", fontsize=9)
    ax.set_xlabel("i − j (query minus key position)")
    ax.set_ylabel("additive logit term")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7, ncol=2)
  _suptitle(fig, f"{_get(ctx.config, 'encoding.name')}: each head's logit term (q = k = 0; dashed: "
               "longest training distance)")
  fig.tight_layout()
  return _save(fig, os.path.join(ctx.out, "bias_vs_distance.png"))


def plot_rotary_frequencies(ctx: Context) -> str:
  """``θ_m`` and wavelengths ``2π/θ_m`` (modules with ``frequencies``: RoPE, xPos)."""
  s = ctx.setup()
  module = _module(ctx)
  enc = ctx.encoding_at(1)
  # The scheme's own ``frequencies``, or RoPE's when it builds on it (xPos imports rope).
  frequencies = getattr(module, "frequencies", None) or getattr(getattr(module, "rope", None),
                                                               "frequencies", None)
  if not (callable(frequencies) and callable(getattr(type(enc), "project", None))):
    raise NotApplicable("the scheme rotates nothing (no frequencies function and project hook)")
  plt = _pyplot()
  dh = s.model_cfg.d_model // s.model_cfg.num_heads
  base = _get(ctx.config, "encoding.base", 10000.0)
  theta = np.asarray(frequencies(dh, base), np.float64)
  curves = [(theta, f"θ_m = {base:g}^(−2m/{dh})")]
  n_eval = ctx.eval_positions()
  long_enc = ctx.encoding_at(n_eval)
  if callable(getattr(long_enc, "static_frequencies", None)):
    scaled, _ = ctx.apply_encoding(long_enc, lambda m: m.static_frequencies())
    scaled = np.asarray(scaled, np.float64)
    if not np.allclose(scaled, theta):
      curves.append((scaled, f"as used up to position {n_eval - 1} "
                             f"({_get(ctx.config, 'encoding.scaling')})"))
  panels = 3 if callable(getattr(module, "zeta", None)) else 2
  fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
  m = np.arange(len(theta))
  for th, label in curves:
    axes[0].semilogy(m, th, marker=".", label=label)
    axes[1].semilogy(m, 2 * np.pi / th, marker=".", label=label)
  axes[0].set_title("rotation frequency per channel pair", fontsize=9)
  axes[1].set_title("wavelength 2π/θ_m (positions)", fontsize=9)
  for length, label, style in ((ctx.train_positions(), "longest training sequence", "--"),
                               (n_eval, "longest evaluated", ":")):
    axes[1].axhline(length, color="k", ls=style, lw=0.8, label=label)
  if panels == 3:
    gamma = _get(ctx.config, "encoding.scale_base", 512.0)
    zeta = np.asarray(module.zeta(dh), np.float64)
    for dist, style in ((ctx.train_positions(), "-"), (n_eval, ":")):
      axes[2].plot(m, zeta ** (dist / gamma), ls=style, marker=".", label=f"distance {dist}")
    axes[2].set_title(f"xPos decay ζ_m^(distance/γ), γ = {gamma:g}", fontsize=9)
  for ax in axes:
    ax.set_xlabel("pair m")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  _suptitle(fig, f"{_get(ctx.config, 'encoding.name')}: rotary frequencies (head width {dh})")
  fig.tight_layout()
  return _save(fig, os.path.join(ctx.out, "rotary_frequencies.png"))


def plot_floater(ctx: Context) -> list[str]:
  """FLOATER's trajectory (2-D PCA per q/k/v stream) and its similarity next to the sinusoids'."""
  if "ode_p0" not in ctx.enc_params:  # decided from the checkpoint alone
    raise NotApplicable("no ODE-solved positions (no encoding/ode_p0 parameter)")
  s = ctx.setup()
  module = _module(ctx)
  if not callable(getattr(module, "solve", None)):
    raise Skip("the scheme's module has no solve function any more")
  from posenc.encodings import sinusoidal
  plt = _pyplot()
  n = ctx.eval_positions()
  enc = ctx.encoding_at(n)
  table = np.asarray(ctx.apply_encoding(enc, lambda m: m.table), np.float64)  # [N, S, L, d]
  train_len = ctx.train_positions()
  streams = {3: ("query", "key", "value"), 1: ("layer input",)}.get(table.shape[1],
                                                                    tuple(map(str, range(table.shape[1]))))
  fig, axes = plt.subplots(1, len(streams) + 1, figsize=(4.4 * (len(streams) + 1), 4))
  for i, name in enumerate(streams):
    rows = table[:, i, 0]
    centred = rows - rows.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    sc = axes[i].scatter(xy[:, 0], xy[:, 1], c=np.arange(n), s=6, cmap="viridis")
    axes[i].plot(xy[:, 0], xy[:, 1], lw=0.4, color="gray")
    if train_len < n:
      axes[i].scatter(*xy[train_len - 1], marker="x", color="r", label="end of training lengths")
      axes[i].legend(fontsize=7)
    axes[i].set_title(f"{name} stream, layer 0 (PCA of p(k·Δt))", fontsize=9)
  fig.colorbar(sc, ax=axes[len(streams) - 1], label="position")
  drift = np.linalg.norm(table - table[:1], axis=-1).mean(axis=(1, 2))
  axes[-1].plot(np.arange(n), drift)
  axes[-1].axvline(train_len - 1, color="k", ls="--", lw=0.8)
  axes[-1].set_title("mean ‖p(k·Δt) − p(0)‖ over streams and layers", fontsize=9)
  axes[-1].set_xlabel("position k")
  axes[-1].grid(alpha=0.3)
  fig.tight_layout()
  paths = [_save(fig, os.path.join(ctx.out, "floater_trajectory.png"))]

  d = s.model_cfg.d_model
  sin = np.asarray(sinusoidal.table(np.arange(n), d, _get(ctx.config, "encoding.base", 10000.0)))
  fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.6))
  # Centred: with Δt = 0.01 the trajectory moves little, and raw cosines are all close to 1.
  rows = table[:, 0, 0]
  _similarity_panel(axes[0], _cosine(rows - rows.mean(0)),
                    "FLOATER query stream, layer 0 (centred: p_k − mean p)", (train_len,))
  _similarity_panel(axes[1], _cosine(sin), f"sinusoidal table (d = {d})", (train_len,))
  _suptitle(fig, "cosine similarity of position vectors (dashed: end of the training lengths)")
  fig.tight_layout()
  paths.append(_save(fig, os.path.join(ctx.out, "floater_vs_sinusoidal.png")))
  return paths


def plot_attention(ctx: Context) -> list[str]:
  """Every layer's and head's attention for one sample at a training and a longer length."""
  import jax
  from posenc import data, positions as positions_lib
  s = ctx.setup()
  plt = _pyplot()
  train_len = s.config.task.train_max_length
  long_len = ctx.long_length or min(s.config.eval.max_length, max(DEFAULT_LONG_CAP, train_len + 1))
  paths = []
  for length, name in ((train_len, "attention_train.png"), (long_len, "attention_long.png")):
    if name == "attention_long.png" and long_len <= train_len:
      print(f"note: skipped {name}: the longest evaluated length ({long_len}) is not beyond "
            f"training ({train_len})")
      continue
    total = data.total_length(s.task, length)
    padded = -(-total // 8) * 8
    model = s.model(s.eval_bound(padded)).clone(capture_attention=True)
    batch_fn = data.make_batch_fn(s.task, positions_lib.make(s.config.positions, train=False),
                                  batch_size=1, lengths=(length,), padded_length=padded,
                                  causal=s.causal)
    batch = batch_fn(jax.random.PRNGKey(0), 0)
    _, state = model.apply({"params": _jnp_tree(ctx.params)}, batch["tokens"], batch["positions"],
                           batch["valid"], train=False, mutable=["intermediates"])
    inter = state["intermediates"]
    layers, heads = s.model_cfg.num_layers, s.model_cfg.num_heads
    fig, axes = plt.subplots(layers, heads, figsize=(2.4 * heads, 2.4 * layers + 0.6), squeeze=False)
    for l in range(layers):
      w = np.asarray(inter[f"attention_{l}"][0])[0, :, :total, :total]
      for h in range(heads):
        ax = axes[l][h]
        ax.imshow(w[h], cmap="viridis", vmin=0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"layer {l} head {h}", fontsize=8)
        if length > train_len:
          tl = data.total_length(s.task, train_len)
          ax.axhline(tl - 0.5, color="w", lw=0.6, ls="--")
          ax.axvline(tl - 0.5, color="w", lw=0.6, ls="--")
    _suptitle(fig, f"{_get(ctx.config, 'encoding.name')} on {s.task.name}: attention, input length "
                 f"{length} ({total} tokens; rows: queries, columns: keys)")
    fig.tight_layout()
    paths.append(_save(fig, os.path.join(ctx.out, name)))
  return paths


PLOTS: list[tuple[str, Callable[[Context], Any]]] = [
    ("position_similarity.png", plot_position_similarity),
    ("bias_vs_distance.png", plot_bias_vs_distance),
    ("rotary_frequencies.png", plot_rotary_frequencies),
    ("floater_*.png", plot_floater),
    ("attention_*.png", plot_attention),
]


def make_plots(ctx: Context) -> list[str]:
  """Every plot that applies. One that cannot be made is named in a one-line note saying why
  (plots skipped for the same reason share the line); those of other scheme families are listed."""
  written: list[str] = []
  skipped: dict[str, list[str]] = {}
  other_family: list[str] = []
  for name, fn in PLOTS:
    try:
      got = fn(ctx)
    except NotApplicable:
      other_family.append(name)
      continue
    except Skip as e:
      skipped.setdefault(str(e), []).append(name)
      continue
    except Exception as e:  # noqa: BLE001 — one failing plot must not stop the others
      skipped.setdefault(f"it failed ({_first_line(e)})", []).append(name)
      continue
    for path in [got] if isinstance(got, str) else got:
      print(f"plot: {path}")
      written.append(path)
  for reason, names in skipped.items():
    print(f"note: skipped {', '.join(names)}: {reason}")
  if other_family:
    print(f"(not for this scheme: {', '.join(other_family)})")
  return written


# ----------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line and status 2, not the usage text
    raise InspectError(f"{message}; usage: python -m scripts.inspect_checkpoint WORKDIR "
                       "[--step N] [--plots] [--out DIR] [--long_length L]")


def inspect(workdir: str, step: int | None = None, plots: bool = False, out: str | None = None,
            long_length: int = 0) -> dict:
  """Prints the report (and writes plots); returns ``{step, params, config, plots}``."""
  mngr, steps = open_checkpoints(workdir)
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise InspectError(f"--step {step}: no checkpoint at step {step} in {workdir!r}; available: "
                       f"{', '.join(map(str, steps))}")
  state, _ = load_checkpoint(mngr, step, steps, workdir)
  state = {k: v for k, v in state.items()}
  state["params"] = _numpy_tree(state["params"])
  config = read_json(os.path.join(workdir, "config.json"))
  config = config if isinstance(config, dict) else None
  results = read_json(os.path.join(workdir, "results.json"))
  results = results if isinstance(results, dict) else None
  for line in describe(workdir, step, steps, state, config, read_metrics(workdir), results):
    print(line)
  written = []
  if plots:
    out = out or os.path.join(workdir, "inspect")
    ctx = Context(workdir, config, state["params"], out, long_length)
    written = make_plots(ctx)
  sys.stdout.flush()
  return {"step": step, "params": state["params"], "config": config, "plots": written}


def _numpy_tree(tree):
  if isinstance(tree, dict):
    return {k: _numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


def main(argv: list[str] | None = None, *, exiting: bool = False) -> int:
  """Runs the command line; returns the exit status (2: bad input, with one line on stderr).

  ``exiting``: the process ends right after (``__main__``), so stderr may stay silenced after a
  damaged checkpoint (see :func:`_quiet_stderr`).
  """
  parser = _Parser(prog="python -m scripts.inspect_checkpoint", description=__doc__.split("\n")[0])
  parser.add_argument("workdir", help="a run's folder (the --workdir of experiments.run)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--plots", action="store_true", help="also write PNGs (see the module doc)")
  parser.add_argument("--out", default=None, help="folder for the PNGs (default: WORKDIR/inspect)")
  parser.add_argument("--long_length", type=int, default=0,
                      help=f"input length of the long attention map (default: eval.max_length, "
                           f"at most {DEFAULT_LONG_CAP})")
  try:
    args = parser.parse_args(argv)
    for name in ("absl", "orbax", "jax"):
      logging.getLogger(name).setLevel(logging.ERROR)
    inspect(args.workdir, args.step, args.plots, args.out, args.long_length)
  except InspectError as e:
    _print_error(str(e))
    if not exiting:
      _restore_stderr()
    return 2
  finally:
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # inspection never needs an accelerator
  status = main(exiting=True)
  sys.stdout.flush()
  # Exit at once: after a damaged checkpoint, tensorstore's threads may still be printing.
  os._exit(status)
