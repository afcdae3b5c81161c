"""Dropout whose masks are flax's, drawn by one fused kernel instead of a loop.

``Dropout`` is a drop-in for ``flax.linen.Dropout`` (same name, so the same module paths
and the same ``make_rng("dropout")`` keys) whose masks are bit for bit the ones
``flax.linen.Dropout`` draws: ``jax.random.bernoulli(key, 1 - rate, shape)`` keeps an element
when its ``jax.random.uniform`` draw is below ``1 - rate``, and that draw is
``m * 2**-23`` with ``m`` the top 23 of the 32 random bits of the element, so

    keep  <=>  m * 2**-23 < p   <=>  m < ceil(p * 2**23)     (p = float32(1 - rate))

an integer comparison with no float conversion. The random bits are the ones
``jax.random.bits(key, shape)`` gives a ``threefry2x32`` key under
``jax_threefry_partitionable`` (JAX's default since 0.5): element ``i`` (row-major) gets
``x0 ^ x1`` of Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as
easy as 1, 2, 3", SC 2011) of the counter pair ``(i >> 32, i & 0xffffffff)`` under the
key. JAX lowers that hash on CPUs as a rolled loop of five steps, each of which writes
both counter arrays to memory (XLA cannot fuse across a loop), and the loop's bits then go
through a float conversion: on the paper preset's training step (128 x 80 tokens, 16
masks, 20 M elements) that was a fifth of the step on a 2-core CPU. Written out round by
round here, the hash, the comparison and the select fuse into one elementwise kernel per
mask: 7x faster per mask on that CPU, and the same bits on every backend.

Keys of another PRNG implementation, or with ``jax_threefry_partitionable`` off, fall back
to ``jax.random.bernoulli`` (flax's own code path), so masks never depend on which branch
ran. ``tests/test_train_buckets.py`` checks the bits and masks against JAX and flax.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Threefry-2x32 rotation constants (Random123; the same as JAX's), used in groups of four.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)

# Tests and benchmarks set this to False to draw masks with jax.random.bernoulli instead
# (the same masks, slower on CPUs): the reference the fused kernel is compared against.
FUSED = True


def _rotl(x, d: int):
  return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry_bits(key_data: jax.Array, shape: tuple[int, ...],
                  layout: tuple[int, ...] | None = None) -> jax.Array:
  """uint32 ``shape``: ``jax.random.bits(key, shape)`` of the threefry key whose data
  (``uint32[2]``) is ``key_data``, under ``jax_threefry_partitionable``; unrolled, so XLA
  fuses it with its consumer. Sizes up to 2**32 elements (the high counter word is 0).

  ``layout`` (at least ``shape`` on every axis): the bits are ``jax.random.bits(key,
  layout)[:shape[0], :shape[1], ...]``, the leading corner of a larger draw, computed
  without drawing the rest.
  """
  layout = tuple(shape) if layout is None else tuple(layout)
  if len(layout) != len(shape) or any(s > l for s, l in zip(shape, layout)):
    raise ValueError(f"threefry_bits: layout {layout} does not contain shape {shape}")
  if math.prod(layout) >= 2 ** 32:
    raise ValueError(f"threefry_bits: {math.prod(layout)} elements; at most 2**32 - 1")
  k0, k1 = key_data[0], key_data[1]
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0 = jnp.broadcast_to(ks[0], shape)  # counter high word 0, plus the first key word
  if layout == tuple(shape):
    counter = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  else:  # row-major index in the layout of each element of the corner
    strides = [math.prod(layout[a + 1:]) for a in range(len(layout))]
    counter = sum(lax.broadcasted_iota(jnp.uint32, shape, a) * np.uint32(st)
                  for a, st in enumerate(strides))
  x1 = counter + ks[1]
  for i in range(5):  # five groups of four rounds, a key injection after each
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = _rotl(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0 ^ x1


def keep_mask(key: jax.Array, keep_prob: float, shape: tuple[int, ...],
              layout: tuple[int, ...] | None = None) -> jax.Array:
  """bool ``shape``: exactly ``jax.random.bernoulli(key, keep_prob, layout)`` (float32) cut
  to its leading corner ``shape`` (``layout``: default ``shape``)."""
  layout = tuple(shape) if layout is None else tuple(layout)
  data, fused = _threefry_data(key)
  if not (fused and FUSED):
    return jax.random.bernoulli(key, keep_prob, layout)[tuple(slice(0, n) for n in shape)]
  p = np.float32(keep_prob)
  threshold = math.ceil(float(p) * 2 ** 23)  # exact: p * 2**23 is a float64 without rounding
  return (threefry_bits(data, shape, layout) >> np.uint32(9)) < np.uint32(threshold)


def _threefry_data(key: jax.Array) -> tuple[jax.Array | None, bool]:
  """The uint32[2] data of a threefry key (raw or typed), and whether the fused path applies."""
  if not jax.config.jax_threefry_partitionable:
    return None, False
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if "threefry" not in str(jax.random.key_impl(key)):
      return None, False
    return jax.random.key_data(key), key.shape == ()
  impl = jax.config.jax_default_prng_impl
  fused = key.shape == (2,) and key.dtype == jnp.uint32 and "threefry" in str(impl)
  return key, fused


class Dropout(nn.Module):
  """``flax.linen.Dropout`` (rate, ``deterministic``, rng collection ``"dropout"``) with the
  masks of :func:`keep_mask`; same outputs, gradients and module names.

  ``mask_length``: for inputs ``[B, L, ...]`` with ``L <= mask_length``, the mask is the one
  flax draws for ``[B, mask_length, ...]``, cut to ``L`` rows. The training step sets it to
  the padded length of the one program over all training lengths, so that a program padded
  only to its bucket of lengths (``config.train.num_buckets``) drops exactly the elements
  that one program drops for the same step. 0: the input's own length.
  """

  rate: float
  deterministic: bool | None = None
  rng_collection: str = "dropout"
  mask_length: int = 0

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng: jax.Array | None = None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    layout = None
    if inputs.ndim >= 2 and self.mask_length > inputs.shape[1]:
      layout = (inputs.shape[0], self.mask_length, *inputs.shape[2:])
    mask = keep_mask(rng, keep_prob, inputs.shape, layout)
    return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
