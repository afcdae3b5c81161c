"""Multiplicative absolute encoding: the position scales the token embedding channel-wise.

Instead of adding ``p_k``, multiply by it element-wise: the "相乘式" (multiplicative)
kind of absolute encoding in Su's survey "让研究人员绞尽脑汁的Transformer位置编码"
(kexue.fm/archives/8130), which suggests ``x_k ⊗ p_k`` as the alternative to ``x_k + p_k``.

* ``variant = "learned"``: ``x_k ⊙ (1 + p_k)``, ``p ∈ R^{max_len × d}``
  initialised to zero, so the scheme starts as the identity and learns how far
  to depart from it. There is no row beyond ``max_len``: as in ``learned``, a
  run that would need one is refused unless ``fallback = "clamp"``.
* ``variant = "sinusoidal"``: ``x_k ⊙ p_k`` with the parameter-free
  :func:`posenc.encodings.sinusoidal.table` (interleaved ``sin``/``cos``).
  Note ``p_0 = [0, 1, 0, 1, …]``: at position 0 the ``sin`` channels are zero.

Either way the map is linear in ``x`` for fixed positions, and diagonal: it
never mixes channels. Position math is float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings import learned, sinusoidal
from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

VARIANTS = ("learned", "sinusoidal")


def apply(x: jax.Array, scale: jax.Array) -> jax.Array:
  """``x ⊙ scale`` with ``scale`` (float32, ``[B|1, L, D]``) cast to ``x``'s dtype."""
  return x * scale.astype(x.dtype)


def learned_scale(table: jax.Array, positions: jax.Array) -> jax.Array:
  """``1 + P[k]`` at ``positions`` (past the end: the last row) -> ``[..., d]``."""
  return 1.0 + learned.lookup(table, positions)


def sinusoidal_scale(positions: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
  """``p_k = sinusoidal.table(k)`` at ``positions`` -> ``[..., dim]`` float32."""
  return sinusoidal.table(positions, dim, base)


class Encoding(_Base):
  """Multiplies the token embeddings by a per-position, per-channel scale."""

  variant: str = "learned"
  max_len: int = 256
  fallback: str = "error"
  base: float = 10000.0

  def setup(self):
    if self.variant == "learned":
      # Zero init: 1 + p = 1, the scheme starts as the identity.
      self.table = self.param("table", nn.initializers.zeros,
                              (self.max_len, self.dims.d_model), jnp.float32)

  def check(self, max_position):
    if self.variant not in VARIANTS:
      raise ConfigError("config.encoding.variant",
                        f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
    if self.variant != "learned":
      return
    learned.check_table(self.max_len, self.fallback, max_position,
                        other_fix=", set --config.encoding.variant=sinusoidal,")

  def embed(self, x, positions):
    if self.variant == "learned":
      scale = learned_scale(self.table, positions)
    else:
      scale = sinusoidal_scale(positions, self.dims.d_model, self.base)
    return apply(x, scale)
