"""``rotary_frequencies.png``: a rotary scheme's ``θ_m`` and wavelengths ``2π/θ_m`` per pair.

For schemes whose module has a ``frequencies(head_dim, base)`` function (or imports RoPE's, as
xPos does) and a ``project`` hook. When the longest evaluated program rescales the frequencies
(``static_frequencies``: PI, NTK, YaRN), the scaled ones are drawn too; a module with ``zeta``
(xPos) gets a third panel with its decay ``ζ_m^(distance/γ)``.
"""

from __future__ import annotations

import os

import numpy as np

from posenc.inspect import figures
from posenc.inspect.context import Context, NotApplicable


def plot_rotary_frequencies(ctx: Context) -> str:
  """``θ_m`` and wavelengths ``2π/θ_m`` (modules with ``frequencies``: RoPE, xPos)."""
  s = ctx.setup()
  module = ctx.scheme_module()
  enc = ctx.encoding_at(1)
  # The scheme's own ``frequencies``, or RoPE's when it builds on it (xPos imports rope).
  frequencies = getattr(module, "frequencies", None) or getattr(getattr(module, "rope", None),
                                                               "frequencies", None)
  if not (callable(frequencies) and callable(getattr(type(enc), "project", None))):
    raise NotApplicable("the scheme rotates nothing (no frequencies function and project hook)")
  plt = figures.pyplot()
  dh = s.model_cfg.d_model // s.model_cfg.num_heads
  base = ctx.get("encoding.base", 10000.0)
  theta = np.asarray(frequencies(dh, base), np.float64)
  curves = [(theta, f"θ_m = {base:g}^(−2m/{dh})")]
  n_eval = ctx.eval_positions()
  long_enc = ctx.encoding_at(n_eval)
  if callable(getattr(long_enc, "static_frequencies", None)):
    scaled, _ = ctx.apply_encoding(long_enc, lambda m: m.static_frequencies())
    scaled = np.asarray(scaled, np.float64)
    if not np.allclose(scaled, theta):
      curves.append((scaled, f"as used up to position {n_eval - 1} "
                             f"({ctx.get('encoding.scaling')})"))
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
    gamma = ctx.get("encoding.scale_base", 512.0)
    zeta = np.asarray(module.zeta(dh), np.float64)
    for dist, style in ((ctx.train_positions(), "-"), (n_eval, ":")):
      axes[2].plot(m, zeta ** (dist / gamma), ls=style, marker=".", label=f"distance {dist}")
    axes[2].set_title(f"xPos decay ζ_m^(distance/γ), γ = {gamma:g}", fontsize=9)
  for ax in axes:
    ax.set_xlabel("pair m")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  figures.suptitle(fig, f"{ctx.get('encoding.name')}: rotary frequencies (head width {dh})")
  fig.tight_layout()
  return figures.save(fig, os.path.join(ctx.out, "rotary_frequencies.png"))
