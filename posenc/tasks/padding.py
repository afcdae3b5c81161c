"""Small helpers for padded samplers: a traced length inside a static width.

A native padded sampler (``Task._sample_padded``) draws everything at the static
width ``max_length`` and masks what lies past the (possibly traced) ``length``;
these helpers keep that masking short and uniform.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def arange_row(width: int) -> jax.Array:
  """``[[0, 1, …, width − 1]]``, int32 ``[1, width]``."""
  return jnp.arange(width, dtype=jnp.int32)[None, :]


def before(length, width: int) -> jax.Array:
  """bool ``[1, width]``: True at positions ``< length`` (``length`` scalar or ``[B, 1]``)."""
  return arange_row(width) < length


def take(a: jax.Array, idx: jax.Array) -> jax.Array:
  """``a[b, idx[b, j]]`` with indices clipped into range (``a`` [B, W], ``idx`` [B|1, K])."""
  idx = jnp.clip(idx, 0, a.shape[1] - 1)
  return jnp.take_along_axis(a, jnp.broadcast_to(idx, (a.shape[0],) + idx.shape[1:]), axis=1)


def zero_past(x: jax.Array, length) -> jax.Array:
  """``x`` [B, W] with entries at positions ``>= length`` set to 0 (tidy padding)."""
  return jnp.where(before(length, x.shape[1]), x, 0)
