"""Sinusoidal absolute encoding (Vaswani et al., 2017).

Public math: :func:`table` in the paper's interleaved layout,
``p_k[2m] = sin(k·ω_m)``, ``p_k[2m+1] = cos(k·ω_m)``, ``ω_m = base^(−2m/d)``.
Properties (tested): ``p_{k+δ} = M(δ)·p_k`` with ``M`` block-diagonal 2×2
rotations, ``p_a·p_b`` depends only on ``a − b``, ``p_k·p_k = d/2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base


def frequencies(dim: int, base: float = 10000.0) -> jax.Array:
  """``ω_m = base^(−2m/dim)`` for ``m = 0 .. dim/2 − 1`` (float32)."""
  if dim % 2:
    raise ValueError(f"sinusoidal encodings need an even width, got {dim}")
  return base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)


def table(positions: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
  """Sinusoids for integer (or real) ``positions`` of any shape -> ``[..., dim]`` float32.

  Interleaved layout: even channels are ``sin``, odd channels ``cos`` of the
  same frequency.
  """
  angles = jnp.asarray(positions, jnp.float32)[..., None] * frequencies(dim, base)
  return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)


def rotation(delta: float, dim: int, base: float = 10000.0) -> jax.Array:
  """``M(δ)``: the ``[dim, dim]`` block-diagonal matrix with ``table(k + δ) = M(δ) @ table(k)``."""
  theta = delta * frequencies(dim, base)
  c, s = jnp.cos(theta), jnp.sin(theta)
  # (sin, cos) pair: sin(a+t) = sin a cos t + cos a sin t; cos(a+t) = cos a cos t − sin a sin t.
  blocks = jnp.stack([jnp.stack([c, s], -1), jnp.stack([-s, c], -1)], -2)  # [dim/2, 2, 2]
  return jax.scipy.linalg.block_diag(*blocks)


class Encoding(_Base):
  """Adds ``scale · table(positions)`` to the token embeddings."""

  base: float = 10000.0
  scale: float = 1.0

  def embed(self, x, positions):
    return x + (self.scale * table(positions, self.dims.d_model, self.base)).astype(x.dtype)
