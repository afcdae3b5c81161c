"""Complex-valued word embeddings that encode order (Wang et al., ICLR 2020,
"Encoding word order in complex embeddings").

Word ``w`` at position ``pos`` is, per complex channel ``j``,

    z_{w,j}(pos) = r_{w,j} · exp(i·(ω_{w,j}·pos + θ_{w,j}))

with a learned amplitude ``r`` (the ordinary word embedding), frequency ``ω``
and initial phase ``θ``, all per word. Shifting the position by ``δ``
multiplies every channel by ``exp(i·ω_{w,j}·δ)``, so relative order is a
word-dependent rotation. The scheme owns the token embedding
(``token_embed``); its output is ``[Re z | Im z]``: ``D/2`` complex channels,
real parts in the first half of the width and imaginary parts in the second
(the official Transformer code also keeps real and imaginary parts side by
side). The rest of the model is the usual real Transformer.

Initialisation, following the official code (github.com/FreedomIntelligence/
complex-order, ``LANGUAGE MODELING/pytorch-complex/complex_mem_transformer.py``,
``get_sinusoid_encoding_table``): every word's frequency row starts at the
sinusoid frequencies ``ω_j = 10000^(−2⌊j/2⌋/(D/2))`` over the ``D/2`` complex
channels (pairs of channels share one frequency; the PAD row of ω is zero
there), and the phase is ``pos·ω`` with no initial phase, which is ``θ = 0``
here (``θ`` stays learnable, as in the paper's formula). The amplitude is
initialised like the model's own token embedding, N(0, 1/D), so that with the
model's ``sqrt(D)`` embedding scale its entries are N(0, 1), as with the
official ``nn.Embedding`` scaled by ``sqrt(d)``. The official LM counts positions
from 1; here positions are the ones given (contiguous ones start at 0).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

PAD = 0  # posenc.data.PAD: the token id whose frequency row starts at zero, as officially


def initial_frequencies(num_channels: int, base: float = 10000.0) -> jax.Array:
  """``ω_j = base^(−2⌊j/2⌋/num_channels)``, ``j < num_channels`` (the official code's table row)."""
  j = jnp.arange(num_channels, dtype=jnp.float32)
  return base ** (-2.0 * jnp.floor(j / 2.0) / num_channels)


def encode(amplitude: jax.Array, frequency: jax.Array, phase: jax.Array,
          positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(Re z, Im z)`` of ``z = r·exp(i(ω·pos + θ))``, float32.

  ``amplitude``, ``frequency``, ``phase``: ``[..., L, C]`` (already gathered for
  the words); ``positions``: ``[..., L]`` broadcastable against them.
  """
  angle = (frequency.astype(jnp.float32) * jnp.asarray(positions, jnp.float32)[..., None]
           + phase.astype(jnp.float32))
  r = amplitude.astype(jnp.float32)
  return r * jnp.cos(angle), r * jnp.sin(angle)


def to_real(real: jax.Array, imag: jax.Array) -> jax.Array:
  """``[Re | Im]`` along the last axis: ``[..., C]`` twice -> ``[..., 2C]``."""
  return jnp.concatenate([real, imag], axis=-1)


class Encoding(_Base):
  """Owns the token embedding: ``token_embed(tokens, positions) -> [Re z | Im z]``."""

  base: float = 10000.0

  def setup(self):
    v, c = self.dims.vocab_size, self.dims.d_model // 2
    self.amplitude = self.param("amplitude", nn.initializers.normal(self.dims.d_model ** -0.5),
                                (v, c), jnp.float32)

    def frequency_init(key, shape, dtype=jnp.float32):
      del key
      rows = jnp.broadcast_to(initial_frequencies(shape[1], self.base), shape).astype(dtype)
      return rows.at[PAD].set(0.0) if shape[0] > PAD else rows

    self.frequency = self.param("frequency", frequency_init, (v, c), jnp.float32)
    self.phase = self.param("phase", nn.initializers.zeros, (v, c), jnp.float32)

  def check(self, max_position):
    del max_position
    if self.dims.d_model % 2:
      raise ConfigError("config.model.d_model",
                        f"complex embeddings need an even width (real | imaginary halves), "
                        f"got {self.dims.d_model}")

  def token_embed(self, tokens, positions):
    take = lambda table: jnp.take(table, tokens, axis=0)
    real, imag = encode(take(self.amplitude), take(self.frequency), take(self.phase), positions)
    return to_real(real, imag)
