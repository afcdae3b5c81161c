"""Drawing helpers the plots share, and the one place a figure is written to disk (:func:`save`)."""

from __future__ import annotations

import os
import textwrap

import numpy as np


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save(fig, path: str) -> str:
  """Writes ``fig`` as a PNG at ``path`` (creating its folder) and closes it; returns ``path``.

  Written to a temporary name and renamed, so a killed process never leaves half a PNG.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=100)
  os.replace(tmp, path)
  pyplot().close(fig)
  return path


def suptitle(fig, text: str) -> None:
  """A figure title wrapped to the figure's width (narrow figures would cut it off)."""
  width = max(40, int(fig.get_figwidth() * 13))
  fig.suptitle(textwrap.fill(text, width), fontsize=9)


def cosine(vectors: np.ndarray) -> np.ndarray:
  """``[N, N]`` cosine similarities of ``N`` vectors (each flattened)."""
  v = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
  v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
  return v @ v.T


def similarity_panel(ax, sim: np.ndarray, title: str, marks: tuple[int, ...] = ()) -> None:
  """A similarity matrix on ``[-1, 1]``, with dashed lines before each position in ``marks``."""
  im = ax.imshow(sim, vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
  for m in marks:
    if 0 < m < len(sim):
      ax.axhline(m - 0.5, color="k", lw=0.8, ls="--")
      ax.axvline(m - 0.5, color="k", lw=0.8, ls="--")
  ax.set_title(title, fontsize=9)
  ax.set_xlabel("position j")
  ax.set_ylabel("position i")
  ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
