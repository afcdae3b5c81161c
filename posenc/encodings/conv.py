"""Convolutional position encoding: ``x + GELU(Conv1d(x))``.

Position information from a wide grouped convolution over the token
embeddings, as in wav2vec 2.0's convolutional relative positional embedding
(Baevski et al., NeurIPS 2020: kernel 128, 16 groups, GELU, added to the
input) and CPVT's positional encoding generator (Chu et al., ICLR 2023:
a depthwise convolution added to the tokens). The convolution is
shift-equivariant, so away from the sequence borders it sees only relative
order; absolute position leaks in through the zero padding at the borders
(Islam et al., ICLR 2020).

Padding of the convolution:

* decoder (``dims.causal``): ``kernel_size − 1`` zeros on the left, none on the
  right, so the output at ``t`` depends on inputs ``≤ t`` only (causal).
* encoder: symmetric, ``⌊k/2⌋`` zeros on the left and ``k − 1 − ⌊k/2⌋`` on the
  right (odd ``k``: centred; even ``k``: wav2vec 2.0's ``SamePad``, which pads
  ``k/2`` on both sides and drops the last output).

Batch padding: evaluation pads each sequence to its length bucket's length with PAD
tokens. The hook asks for the validity mask (``EMBED_VALID``) and zeroes the embeddings
of padding slots before convolving, so a sequence's last real tokens see exactly the
zeros they would see at the end of an unpadded sequence, whatever bucket its length
falls in (in the decoder padding comes after every real token anyway).

wav2vec 2.0's weight normalisation of the kernel is not used. ``positions`` are
ignored: position comes from the token order.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


def padding(kernel_size: int, causal: bool) -> tuple[int, int]:
  """``(left, right)`` zeros so that the output has the input's length."""
  if causal:
    return kernel_size - 1, 0
  left = kernel_size // 2
  return left, kernel_size - 1 - left


def conv1d(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, groups: int,
           causal: bool) -> jax.Array:
  """Grouped 1-D convolution over the sequence axis of ``x [B, L, D]``.

  ``kernel`` is ``[kernel_size, D // groups, D]`` (flax ``nn.Conv`` layout);
  returns ``[B, L, D]``, padded as :func:`padding` says.
  """
  pad = padding(kernel.shape[0], causal)
  out = jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(1,), padding=(pad,),
      dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups)
  return out + bias.astype(x.dtype)


class Encoding(_Base):
  """Adds ``GELU(Conv1d(x))`` (grouped, ``kernel_size`` wide) to the token embeddings."""

  EMBED_VALID = True   # padding slots are zeroed before the convolution reads them

  kernel_size: int = 15
  groups: int = 16

  def setup(self):
    d = self.dims.d_model
    self.kernel = self.param("kernel", nn.initializers.lecun_normal(),
                             (self.kernel_size, d // max(self.groups, 1), d), jnp.float32)
    self.bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)

  def incremental(self):
    # Causal, an output reads the kernel_size - 1 slots before it: the model caches the
    # convolution's inputs and a decoding step convolves only that window.
    return self.dims.causal

  def embed_window(self):
    return self.kernel_size - 1 if self.dims.causal else None

  def check(self, max_position):
    del max_position
    if self.kernel_size < 1:
      raise ConfigError("config.encoding.kernel_size", f"must be >= 1, got {self.kernel_size}")
    d = self.dims.d_model
    if self.groups < 1 or d % self.groups:
      divisors = [g for g in range(1, d + 1) if d % g == 0]
      raise ConfigError("config.encoding.groups",
                        f"{self.groups} groups must divide d_model={d}; choose one of {divisors}")

  def embed(self, x, positions, valid=None):
    """``valid [B, L]``: the real tokens; padding reads as the convolution's zero padding."""
    del positions  # position comes from the convolution's view of the token order
    real = x if valid is None else jnp.where(valid[..., None], x, jnp.zeros((), x.dtype))
    y = conv1d(real, self.kernel, self.bias, groups=self.groups, causal=self.dims.causal)
    return x + nn.gelu(y, approximate=False)  # exact GELU, as torch (wav2vec 2.0)
