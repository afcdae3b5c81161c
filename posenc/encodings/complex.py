"""Complex-valued word embeddings that encode order, and the complex-valued attention that
reads them (Wang et al., ICLR 2020, "Encoding word order in complex embeddings").

**Embedding.** Word ``w`` at position ``pos`` is, per complex channel ``j``,

    z_{w,j}(pos) = r_{w,j} · exp(i·(ω_{w,j}·pos + θ_{w,j}))

with a learned amplitude ``r`` (the ordinary word embedding), frequency ``ω`` and initial
phase ``θ``, all per word. Shifting the position by ``δ`` multiplies every channel by
``exp(i·ω_{w,j}·δ)``, so relative order is a word-dependent rotation. The scheme owns the
token embedding (``token_embed``); the model's width ``D`` holds ``C = D/2`` complex
channels as ``[Re z | Im z]`` (real parts in the first half, imaginary in the second), and
every later activation of the residual stream keeps that layout.

**Attention** (``attention="complex"``, the default), as in the official Transformer code
(github.com/FreedomIntelligence/complex-order: ``TRANSLATION/transformer/SubLayers.py`` and
``Modules.py``, ``TEXT CLASSIFICATION/Transformer/attention_complex.py``,
``LANGUAGE MODELING/pytorch-complex/complex_mem_transformer.py``):

* q, k, v: one real matrix per projection, applied to the real and to the imaginary stream
  alike, i.e. a complex vector times a real matrix: ``q = W_q·Re z + i·W_q·Im z``
  (``[C] -> [H, C/H]``; ``H`` heads of ``Dc = C/H`` complex channels). Here they carry no
  bias, as in the official language model (``bias=False``); the translation code's
  ``nn.Linear`` adds one real bias to both streams, which breaks the complex linearity that
  the invariances below rest on.
* scores: the modulus of the complex, **unconjugated** bilinear product,
  ``s_ij = |Σ_d q_id·k_jd| / sqrt(Dc)``, where
  ``Σ_d q_id k_jd = (q_re·k_re − q_im·k_im) + i·(q_re·k_im + q_im·k_re)``
  (the official ``continue_complex=False`` path and the classification code; the scale is
  the classification and language-model ``1/sqrt(d_k)``; the translation code divides by
  ``sqrt(2·d_k)``; the language model's imaginary part repeats ``q_re·k_im`` for
  ``q_im·k_re``, a typo not followed here). Scores are never negative.
* the masked softmax of ``s`` weighs the real and imaginary values alike:
  ``o = Σ_j α_ij v_j`` on both streams.
* the output projection is again one real matrix (no bias) shared by the two streams.

**Invariances** (first layer, tested in ``tests/test_complex.py``). Because the sublayer is
complex-linear in ``z`` with real weights: if a word's frequency is the same in all its
channels (``ω_{w,j} = ω_w``; the official LM's ``schema=1`` learns exactly this, one
frequency per word), a shift by ``δ`` turns ``q_i`` into ``q_i·e^{iω_{w_i}δ}`` and the
complex score into ``e^{i(ω_{w_i}+ω_{w_j})δ}·Σ q k``, so every score, hence every attention
weight, is unchanged. With one frequency for every word and channel, the whole sublayer's
output turns by ``e^{iωδ}``. With per-channel frequencies (the default initialisation) no
exact invariance holds beyond the embedding's own.

**What stays real** (the rest of posenc's Transformer, not the official network): the FFN is
the model's real FFN on ``[Re | Im]`` (the translation code's complex-linear FFN with ReLU
on each part is a special case of it with twice the hidden width; the language model's is
one real FFN applied to each stream); LayerNorm normalises the joint ``[Re | Im]`` width (the
official code applies one LayerNorm to each stream separately); the output head reads the
concatenation ``[Re | Im]``, as the classification code does (the translation code reads
``|z|²`` into the tied softmax, the language model ``|z|/1.5``).

``attention="real"`` keeps the earlier form: ``[Re | Im]`` into an ordinary real attention
(real projections with biases over the full width, softmax of ``q·k/sqrt(D/H)``), an
ablation that isolates the embedding from the complex network.

Initialisation of the embedding, following the official code (``get_sinusoid_encoding_table``):
every word's frequency row starts at the sinusoid frequencies
``ω_j = 10000^(−2⌊j/2⌋/(D/2))`` over the ``D/2`` complex channels (pairs of channels share
one frequency; the PAD row of ω is zero there), and the phase is ``pos·ω`` with no initial
phase, which is ``θ = 0`` here (``θ`` stays learnable, as in the paper's formula). The
amplitude is initialised like the model's own token embedding, N(0, 1/D), so that with the
model's ``sqrt(D)`` embedding scale its entries are N(0, 1), as with the official
``nn.Embedding`` scaled by ``sqrt(d)``. The official LM counts positions from 1; here
positions are the ones given (contiguous ones start at 0). Projections are initialised
LeCun-normal over their fan-in, like the model's own.

Both modes are valid; in a decoder the model's causal mask and key/value cache apply
unchanged (the cache holds the complex keys and values, ``[Re | Im]`` per head).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

PAD = 0  # posenc.data.PAD: the token id whose frequency row starts at zero, as officially
ATTENTIONS = ("complex", "real")


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


def project_in(x_BxLxD: jax.Array, kernel_CxHxDc: jax.Array) -> jax.Array:
  """A real matrix applied to both streams: ``[Re x | Im x]`` -> ``[B, L, H, 2·Dc]``.

  Each head's last axis is ``[Re | Im]`` of its ``Dc`` complex channels.
  """
  b, l, d = x_BxLxD.shape
  x_BxLx2xC = x_BxLxD.reshape(b, l, 2, d // 2)
  y_BxLxHx2xDc = jnp.einsum("blsc,chd->blhsd", x_BxLx2xC, kernel_CxHxDc.astype(x_BxLxD.dtype))
  return y_BxLxHx2xDc.reshape(b, l, kernel_CxHxDc.shape[1], -1)


def project_out(o_BxLxHxE: jax.Array, kernel_HxDcxC: jax.Array) -> jax.Array:
  """The inverse layout of :func:`project_in`: ``[B, L, H, 2·Dc]`` -> ``[B, L, 2C]`` = ``[Re | Im]``."""
  b, l, h, e = o_BxLxHxE.shape
  o_BxLxHx2xDc = o_BxLxHxE.reshape(b, l, h, 2, e // 2)
  y_BxLx2xC = jnp.einsum("blhsd,hdc->blsc", o_BxLxHx2xDc, kernel_HxDcxC.astype(o_BxLxHxE.dtype))
  return y_BxLx2xC.reshape(b, l, -1)


def score_parts(q_BxLxHxE: jax.Array, k_BxLxHxE: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(Re, Im)`` of the unconjugated product ``Σ_d q_id·k_jd``: float32 ``[B, H, Lq, Lk]`` each.

  ``q``, ``k``: ``[B, L, H, 2·Dc]``, ``[Re | Im]`` per head.
  """
  q = q_BxLxHxE.astype(jnp.float32)
  k_re, k_im = jnp.split(k_BxLxHxE.astype(jnp.float32), 2, axis=-1)
  # Re: q_re·k_re − q_im·k_im = [q_re | q_im]·[k_re | −k_im]; Im: [q_re | q_im]·[k_im | k_re].
  real = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.concatenate([k_re, -k_im], axis=-1))
  imag = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.concatenate([k_im, k_re], axis=-1))
  return real, imag


def modulus(real: jax.Array, imag: jax.Array) -> jax.Array:
  """``sqrt(re² + im²)``, with a zero (not NaN) gradient where both are zero."""
  sq = real * real + imag * imag
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def complex_attention(q_BxLxHxE: jax.Array, k_BxLxHxE: jax.Array, v_BxLxHxE: jax.Array,
                      mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``softmax(|Σ q k| / sqrt(Dc))`` over the allowed keys, mixing both value streams.

  ``mask``: boolean, broadcastable to ``[B, H, Lq, Lk]``. Returns the output ``[B, Lq, H, 2·Dc]``
  and the weights float32 ``[B, H, Lq, Lk]``.
  """
  real, imag = score_parts(q_BxLxHxE, k_BxLxHxE)
  s_BxHxQxK = modulus(real, imag) / math.sqrt(q_BxLxHxE.shape[-1] // 2)
  w_BxHxQxK = jax.nn.softmax(jnp.where(mask, s_BxHxQxK, -1e30), axis=-1)
  o = jnp.einsum("bhqk,bkhd->bqhd", w_BxHxQxK.astype(v_BxLxHxE.dtype), v_BxLxHxE)
  return o, w_BxHxQxK


def real_attention(q_BxLxHxDh: jax.Array, k_BxLxHxDh: jax.Array, v_BxLxHxDh: jax.Array,
                   mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ordinary ``softmax(q·k / sqrt(Dh))·v`` (the ``attention="real"`` ablation)."""
  s = jnp.einsum("bqhd,bkhd->bhqk", q_BxLxHxDh, k_BxLxHxDh,
                 preferred_element_type=jnp.float32) / math.sqrt(q_BxLxHxDh.shape[-1])
  w = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", w.astype(v_BxLxHxDh.dtype), v_BxLxHxDh), w


class Encoding(_Base):
  """Owns the token embedding (``[Re z | Im z]``) and each layer's attention projections and weights."""

  base: float = 10000.0
  attention: str = "complex"  # "complex" (the paper's network) or "real" ([Re|Im] into real attention)

  def setup(self):
    d, h, n = self.dims.d_model, self.dims.num_heads, self.dims.num_layers
    v, c = self.dims.vocab_size, d // 2
    self.amplitude = self.param("amplitude", nn.initializers.normal(d ** -0.5), (v, c), jnp.float32)

    def frequency_init(key, shape, dtype=jnp.float32):
      del key
      rows = jnp.broadcast_to(initial_frequencies(shape[1], self.base), shape).astype(dtype)
      return rows.at[PAD].set(0.0) if shape[0] > PAD else rows

    self.frequency = self.param("frequency", frequency_init, (v, c), jnp.float32)
    self.phase = self.param("phase", nn.initializers.zeros, (v, c), jnp.float32)
    if self.attention == "real":  # the model's own projections, over the full real width
      dense = lambda features, axis, name: nn.DenseGeneral(features, axis=axis, name=name)
      self.kernels = [{kind: dense((h, d // h), -1, f"layer{i}_{kind}")
                       for kind in ("query", "key", "value")}
                      | {"out": dense(d, (-2, -1), f"layer{i}_out")} for i in range(n)]
    else:
      dc = max(c // h, 1)
      into = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
      out = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
      self.kernels = [{kind: self.param(f"layer{i}_{kind}", into, (c, h, dc), jnp.float32)
                       for kind in ("query", "key", "value")}
                      | {"out": self.param(f"layer{i}_out", out, (h, dc, c), jnp.float32)}
                      for i in range(n)]

  def check(self, max_position):
    del max_position
    if self.attention not in ATTENTIONS:
      raise ConfigError("config.encoding.attention",
                        f"got {self.attention!r}; choose one of {', '.join(ATTENTIONS)}")
    d, h = self.dims.d_model, self.dims.num_heads
    if d % 2:
      raise ConfigError("config.model.d_model",
                        f"complex embeddings need an even width (real | imaginary halves), got {d}")
    if self.attention == "complex" and (d // 2) % h:
      raise ConfigError("config.model.num_heads",
                        f"complex attention splits the {d // 2} complex channels (d_model / 2) "
                        f"over the heads, so d_model / 2 must be a multiple of num_heads; got "
                        f"d_model={d}, num_heads={h} (e.g. num_heads={math.gcd(d // 2, h)})")

  def token_embed(self, tokens, positions):
    take = lambda table: jnp.take(table, tokens, axis=0)
    real, imag = encode(take(self.amplitude), take(self.frequency), take(self.phase), positions)
    return to_real(real, imag)

  def projection(self, x, kind, layer):
    """``kind`` in query/key/value: ``[B, L, D]`` -> ``[B, L, H, 2·Dc]``; ``out``: back to ``[B, L, D]``."""
    kernel = self.kernels[layer][kind]
    if self.attention == "real":
      return kernel(x).astype(x.dtype)
    return project_out(x, kernel) if kind == "out" else project_in(x, kernel)

  def attend(self, q, k, v, q_pos, k_pos, mask, layer):
    del q_pos, k_pos, layer
    if self.attention == "real":
      return real_attention(q, k, v, mask)
    return complex_attention(q, k, v, mask)
