"""``floater_trajectory.png`` and ``floater_vs_sinusoidal.png``: FLOATER's ODE-solved positions.

For runs with an ``encoding/ode_p0`` parameter whose scheme module has ``solve``. The trajectory
figure shows each q/k/v stream's positions ``p(k·Δt)`` of layer 0 in their first two principal
components, and how far ``p`` drifts from ``p(0)``; the second figure puts the query stream's
(centred) cosine similarity next to the sinusoidal table's, which FLOATER starts from.
"""

from __future__ import annotations

import os

import numpy as np

from posenc.inspect import figures
from posenc.inspect.context import Context, NotApplicable, Skip


def plot_floater(ctx: Context) -> list[str]:
  """FLOATER's trajectory (2-D PCA per q/k/v stream) and its similarity next to the sinusoids'."""
  if "ode_p0" not in ctx.enc_params:  # decided from the checkpoint alone
    raise NotApplicable("no ODE-solved positions (no encoding/ode_p0 parameter)")
  s = ctx.setup()
  module = ctx.scheme_module()
  if not callable(getattr(module, "solve", None)):
    raise Skip("the scheme's module has no solve function any more")
  from posenc.encodings import sinusoidal
  plt = figures.pyplot()
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
  paths = [figures.save(fig, os.path.join(ctx.out, "floater_trajectory.png"))]

  d = s.model_cfg.d_model
  sin = np.asarray(sinusoidal.table(np.arange(n), d, ctx.get("encoding.base", 10000.0)))
  fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.6))
  # Centred: with Δt = 0.01 the trajectory moves little, and raw cosines are all close to 1.
  rows = table[:, 0, 0]
  figures.similarity_panel(axes[0], figures.cosine(rows - rows.mean(0)),
                           "FLOATER query stream, layer 0 (centred: p_k − mean p)", (train_len,))
  figures.similarity_panel(axes[1], figures.cosine(sin), f"sinusoidal table (d = {d})",
                           (train_len,))
  figures.suptitle(fig, "cosine similarity of position vectors (dashed: end of the training "
                   "lengths)")
  fig.tight_layout()
  paths.append(figures.save(fig, os.path.join(ctx.out, "floater_vs_sinusoidal.png")))
  return paths
