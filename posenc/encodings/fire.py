"""FIRE (Li et al., ICLR 2024, "Functional Interpolation for Relative Positions Improves
Long Context Transformers"): a learned function of a progressively normalised distance.

  ``b(i, j) = MLP(ψ(i − j) / ψ(max(L̂, i)))``,  ``ψ(x) = log(c·|x| + 1)``,

with an MLP ``1 → 32 → H`` (ReLU), a learned ``c`` (init 0.1) and a learned
threshold ``L̂ = |λ·L₀|`` (``L₀ = 512`` fixed, multiplier ``λ`` init 1). This
follows the paper's appendix code: the normaliser is the query position
``i`` floored at the threshold, and ``eps = 1e-6`` is added to ``ψ`` of the
normaliser. :func:`normalized_distance` lies in ``[0, 1)`` for ``j ≤ i``.

Layer sharing: like the paper's main FIRE models, each layer has its own MLP,
``c`` and ``λ`` (``encoding.shared = True`` gives the layer-shared "FIRE-S"
variant the paper also reports).

Encoder: the distance is ``|i − j|`` (the normaliser stays ``ψ(max(L̂, i))``), so
keys after the query mirror those before it; for ``i < L̂`` the input stays in
``[0, 1]``, beyond it a key far after the query may map above 1. FIRE is thus
direction-blind in an encoder: for a given query, a key ``d`` before it and a key ``d``
after it get the same bias (only the sequence's ends break the mirror symmetry). The
paper's models are causal decoders and its appendix code, which takes ``|c·(i − j)|``,
runs under a causal mask; neither (nor the public re-implementations read, e.g.
``mcleish7/arithmetic``) defines a direction-aware form, so none is invented here.

Hidden activation: ReLU, as the paper's code. A subclass may set ``NEGATIVE_SLOPE > 0`` for a
LeakyReLU there instead (not a config field, so FIRE's own config is unchanged): DAPE's FIRE
(``posenc/encodings/dape.py``) uses LeakyReLU with PyTorch's default slope 0.01, as its
official code does.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

EPS = 1e-6


def normalized_distance(q_pos: jax.Array, k_pos: jax.Array, c: float | jax.Array = 0.1,
                        length: float | jax.Array = 512.0) -> jax.Array:
  """``ψ(|i − j|) / (ψ(max(length, i)) + 1e-6)`` for ``q_pos [..., Lq]``, ``k_pos [..., Lk]`` -> ``[..., Lq, Lk]``.

  ``ψ(x) = log(|c·x| + 1)``; ``length`` is the threshold ``L̂``. Float32.
  """
  i = jnp.asarray(q_pos, jnp.float32)[..., :, None]
  j = jnp.asarray(k_pos, jnp.float32)[..., None, :]
  c = jnp.asarray(c, jnp.float32)
  psi = lambda x: jnp.log1p(jnp.abs(c * x))
  return psi(i - j) / (psi(jnp.maximum(i, jnp.asarray(length, jnp.float32))) + EPS)


class _FireFunction(nn.Module):
  """One FIRE function: its MLP, ``c`` and threshold multiplier."""

  num_heads: int
  width: int
  init_c: float
  init_length: float
  negative_slope: float = 0.0  # 0: ReLU; > 0: LeakyReLU with this slope

  @nn.compact
  def __call__(self, q_pos, k_pos):
    c = self.param("c", nn.initializers.constant(self.init_c), (), jnp.float32)
    multiplier = self.param("length_multiplier", nn.initializers.ones, (), jnp.float32)
    threshold = jnp.abs(multiplier * self.init_length)
    x = normalized_distance(q_pos, k_pos, c, threshold)[..., None]  # [B|1, Lq, Lk, 1]
    h = nn.Dense(self.width, name="hidden")(x)
    h = nn.leaky_relu(h, self.negative_slope) if self.negative_slope else nn.relu(h)
    return _HeadsFirst(self.num_heads, name="out")(h)  # [B|1, H, Lq, Lk]


class _HeadsFirst(nn.Module):
  """``nn.Dense(features)`` (same parameters, same values) whose output axis comes first:
  ``[B|1, Lq, Lk, W] -> [B|1, H, Lq, Lk]``. The product is formed heads-first, so the term is
  never transposed (moving the head axis past a batch of 1 is free); a Dense followed by a
  transpose copied the whole ``H × Lq × Lk`` term in every layer."""

  features: int

  @nn.compact
  def __call__(self, h):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (h.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    out = jnp.einsum("wh,...qkw->h...qk", kernel, h) + bias.reshape(-1, *([1] * (h.ndim - 1)))
    return jnp.moveaxis(out, 0, -3).astype(jnp.float32)


class Encoding(_Base):
  """Adds a FIRE bias to every layer's logits (per-layer functions unless ``shared``)."""

  mlp_width: int = 32
  init_c: float = 0.1
  init_length: float = 512.0  # L₀; the learned threshold is |λ·L₀|
  shared: bool = False

  # The hidden layer's activation: 0 is ReLU (Li et al.); a subclass sets a LeakyReLU slope.
  NEGATIVE_SLOPE: ClassVar[float] = 0.0

  def check(self, max_position):
    if self.mlp_width < 1:
      raise ConfigError("config.encoding.mlp_width", f"must be >= 1, got {self.mlp_width}")
    if self.init_length <= 0:
      raise ConfigError("config.encoding.init_length", f"must be > 0, got {self.init_length}")
    if self.init_c <= 0:
      raise ConfigError("config.encoding.init_c", f"must be > 0, got {self.init_c}")

  def setup(self):
    make = lambda name: _FireFunction(self.dims.num_heads, self.mlp_width, self.init_c,
                                      self.init_length, self.NEGATIVE_SLOPE, name=name)
    if self.shared:
      self.functions = [make("fire")]
    else:
      self.functions = [make(f"fire_layer{l}") for l in range(self.dims.num_layers)]

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k
    fn = self.functions[0 if self.shared else layer]
    # ψ takes |i − j| in both modes: in a decoder the keys after the query are masked anyway.
    return fn(q_pos, k_pos)
