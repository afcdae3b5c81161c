"""Learned absolute position table (Gehring et al. 2017; BERT; GPT-2).

``x_k + P[k]`` with ``P ∈ R^{max_len × d}`` initialised N(0, 0.02). There is no
row beyond ``max_len``: a run that would need one is refused before it starts,
unless ``fallback = "clamp"`` (every later position reuses the last row).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

FALLBACKS = ("error", "clamp")


def check_table(max_len: int, fallback: str, max_position: int, other_fix: str = "") -> None:
  """Refuses a table of ``max_len`` rows for positions up to ``max_position − 1`` (no fallback)."""
  if fallback not in FALLBACKS:
    raise ConfigError("config.encoding.fallback",
                      f"unknown fallback {fallback!r}; choose one of {FALLBACKS}")
  if max_len < 1:
    raise ConfigError("config.encoding.max_len", f"must be >= 1, got {max_len}")
  if max_position > max_len and fallback == "error":
    raise ConfigError(
        "config.encoding.max_len",
        f"positions up to {max_position - 1} are needed but the learned table has "
        f"{max_len} rows; raise --config.encoding.max_len to at least {max_position}"
        f"{other_fix} or set --config.encoding.fallback=clamp")


def lookup(table, positions):
  """Rows of ``table`` at ``positions``; indices past the end read the last row."""
  return jnp.take(table, jnp.clip(positions, 0, table.shape[0] - 1), axis=0)


class Encoding(_Base):
  """Adds a learned row per position to the token embeddings."""

  max_len: int = 256
  fallback: str = "error"

  def setup(self):
    self.table = self.param("table", nn.initializers.normal(0.02),
                            (self.max_len, self.dims.d_model), jnp.float32)

  def check(self, max_position):
    check_table(self.max_len, self.fallback, max_position)

  def embed(self, x, positions):
    return x + lookup(self.table, positions).astype(x.dtype)
