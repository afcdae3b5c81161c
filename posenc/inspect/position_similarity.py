"""``position_similarity.png``: ``cos(p_i, p_j)`` of a scheme's absolute position vectors.

A saved 2-D ``encoding/table`` (learned, hierarchical) needs no code: its rows are drawn as they
are. Otherwise (or beyond the table's rows) the scheme's ``embed`` hook is evaluated on a zero
input at positions ``0..N-1`` with the saved parameters (sinusoidal, hierarchical beyond its
table, recurrent, ...). A scheme that computes a position table from its parameters alone
(``"table"`` in its ``EVAL_CACHE``: FLOATER's ODE solve ``p(k·Δt)``) also gets that table's rows
at positions ``0..N-1``, each row everything the model adds at that position (FLOATER: the
q/k/v terms of every layer, or the layer-input terms), as added and centred (``p_k − mean p``:
with Δt = 0.01 the rows share a large common part). Schemes whose positions act only inside
attention have no such vectors.
"""

from __future__ import annotations

import os

import numpy as np

from posenc.inspect import figures
from posenc.inspect.context import MAX_POSITIONS, Context, NotApplicable, Skip


def plot_position_similarity(ctx: Context) -> str:
  """``cos(p_i, p_j)`` of a saved table (no code needed) or of the ``embed`` hook's vectors."""
  plt = figures.pyplot()
  panels = []
  table = ctx.enc_params.get("table")
  d_model = ctx.get("model.d_model")
  if table is not None and np.ndim(table) == 2 and (d_model is None or np.shape(table)[1] == d_model):
    rows = np.asarray(table)[:MAX_POSITIONS]
    panels.append((rows, f"saved encoding/table, rows 0–{len(rows) - 1}"))
  try:
    probed = _probe_embed(ctx, skip_upto=len(panels[0][0]) if panels else 0)
    if probed is not None:
      panels.append(probed)
  except NotApplicable:
    if not _solves_a_table(ctx):
      raise
  except Skip as e:
    if not panels:
      raise
    print(f"note: position_similarity.png shows the saved table only: {e}")
  if _solves_a_table(ctx):
    panels += _solved_table(ctx)
  if not panels:
    raise NotApplicable("no absolute position vectors (no encoding/table, no embed hook)")
  try:
    marks = (ctx.train_positions(),)
  except Skip:
    marks = ()
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
  for ax, (vectors, title) in zip(axes[0], panels):
    figures.similarity_panel(ax, figures.cosine(vectors), title, marks)
  figures.suptitle(fig, f"{ctx.get('encoding.name', '?')}: cosine similarity of position vectors"
                   + (" (dashed: end of the training lengths)" if marks else ""))
  fig.tight_layout()
  return figures.save(fig, os.path.join(ctx.out, "position_similarity.png"))


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


def _solves_a_table(ctx: Context) -> bool:
  """Whether the run's scheme computes a position table from its parameters (``EVAL_CACHE``)."""
  try:
    enc = ctx.encoding_at(1)
  except Skip:
    return False
  return "table" in getattr(type(enc), "EVAL_CACHE", ())


def _solved_table(ctx: Context) -> list:
  """The rows ``[N, ...]`` of the table the scheme computes (FLOATER: ``p(k·Δt)``) at positions
  ``0..N-1``, flattened per position: as the model adds them, and centred."""
  n = ctx.eval_positions()
  enc = ctx.encoding_at(n)
  rows = np.asarray(ctx.apply_encoding(enc, lambda m: m.table), np.float64)
  what = f"solved table at positions 0–{n - 1} ({' × '.join(map(str, rows.shape[1:]))} per row)"
  rows = rows.reshape(n, -1)
  return [(rows, what + ", as added"), (rows - rows.mean(0), what + ", centred: p_k − mean p")]
