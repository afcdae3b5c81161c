"""TUPE: untied positional encoding (Ke, He & Liu, ICLR 2021,
"Rethinking Positional Encoding in Language Pre-training").

Positions never enter the token stream. Every layer's logits are

    s_ij = (x_i W^Q)(x_j W^K)ᵀ / sqrt(2·d_h) + (p_i U^Q)(p_j U^K)ᵀ / sqrt(2·d_h)  [+ b_{j−i}]

with ``p = LayerNorm(P)`` rows of a learned absolute table ``P ∈ R^{max_len × d}``
and per-head projections ``U^Q, U^K`` (one ``d → 2d`` linear with bias, split
into heads, as the official ``pos_proj``). The position term depends on
positions only, so it is computed from parameters created once and is the same
term in every layer (official ``TransformerSentenceEncoder``: ``abs_pos_bias``
computed once and passed to all layers). Content is rescaled by
``CONTENT_SCALE = 1/sqrt(2)`` (official ``attn_scale_factor = 2``).

TUPE-R (``relative = True``) adds the T5 bias ``b = B[bucket(j − i), h]`` with
:func:`posenc.encodings.t5.relative_position_bucket` (bidirectional, 32
buckets, ``max_distance`` 128: the official ``rel_pos_bins`` / ``max_rel_pos``),
one table shared by all layers.

Official initialisation (``init_bert_params``): table and projections
``N(0, 0.02)``, zero biases; the TUPE-R table is created after that init is
applied, so it keeps PyTorch's ``nn.Embedding`` default ``N(0, 1)``.

Not applicable: the paper's [CLS] untie (a dedicated position pair for the
first token, and extra T5 buckets for it): these tasks have no [CLS] token.
The table has ``max_len`` rows: runs needing a position past it are refused.
Encoder only, as published.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings import t5
from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


def position_logits(table_NxD: jax.Array, u_q_DxHxDh: jax.Array, b_q_HxDh: jax.Array,
                    u_k_DxHxDh: jax.Array, b_k_HxDh: jax.Array, q_pos: jax.Array,
                    k_pos: jax.Array) -> jax.Array:
  """``(p_i U^Q)(p_j U^K)ᵀ / sqrt(2·d_h)`` from a normalised table ``p``: ``[B|1, H, Lq, Lk]``.

  Rows are read at ``q_pos``/``k_pos`` (int ``[B|1, L]``, below ``N``); positions
  shared by the batch give a batch-1 term.
  """
  dh = u_q_DxHxDh.shape[-1]
  table = table_NxD.astype(jnp.float32)
  pq_BxLxHxDh = jnp.einsum("blc,chd->blhd", jnp.take(table, q_pos, axis=0),
                           u_q_DxHxDh.astype(jnp.float32)) + b_q_HxDh
  pk_BxLxHxDh = jnp.einsum("blc,chd->blhd", jnp.take(table, k_pos, axis=0),
                           u_k_DxHxDh.astype(jnp.float32)) + b_k_HxDh
  return jnp.einsum("bqhd,bkhd->bhqk", pq_BxLxHxDh, pk_BxLxHxDh) / math.sqrt(2.0 * dh)


class Encoding(_Base):
  """A LayerNorm'd learned table whose per-head q/k projection gives a shared logit term."""

  MODES = ("encoder",)
  MODE_REASON = "TUPE is published only for bidirectional, BERT-style encoders"
  CONTENT_SCALE = 1.0 / math.sqrt(2.0)  # content q·k / sqrt(2·d_h)

  max_len: int = 256
  relative: bool = False  # TUPE-R: add the T5 bucketed bias
  num_buckets: int = 32
  max_distance: int = 128

  def setup(self):
    d, h, dh = self.dims.d_model, self.dims.num_heads, self.dims.head_dim
    init = nn.initializers.normal(0.02)
    self.table = self.param("pos", init, (self.max_len, d), jnp.float32)
    self.pos_norm = nn.LayerNorm(epsilon=1e-5)  # fairseq LayerNorm default
    self.u_q = self.param("pos_q_kernel", init, (d, h, dh), jnp.float32)
    self.b_q = self.param("pos_q_bias", nn.initializers.zeros, (h, dh), jnp.float32)
    self.u_k = self.param("pos_k_kernel", init, (d, h, dh), jnp.float32)
    self.b_k = self.param("pos_k_bias", nn.initializers.zeros, (h, dh), jnp.float32)
    if self.relative:
      self.rel_table = self.param("relative_attention_bias", nn.initializers.normal(1.0),
                                  (self.num_buckets, h), jnp.float32)

  def check(self, max_position):
    if self.max_len < 1:
      raise ConfigError("config.encoding.max_len", f"must be >= 1, got {self.max_len}")
    if max_position > self.max_len:
      raise ConfigError(
          "config.encoding.max_len",
          f"positions up to {max_position - 1} are needed but the TUPE position table has "
          f"{self.max_len} rows; raise --config.encoding.max_len to at least {max_position}")
    if self.relative:
      if self.num_buckets < 4 or self.num_buckets % 2:
        raise ConfigError("config.encoding.num_buckets",
                          f"must be an even number >= 4, got {self.num_buckets}")
      if self.max_distance <= self.num_buckets // 4:
        raise ConfigError("config.encoding.max_distance",
                          f"must exceed the exact range ({self.num_buckets // 4}) of "
                          f"{self.num_buckets} bidirectional buckets, got {self.max_distance}")

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k, layer  # parameters shared by all layers: the term is identical in each
    # check() refuses runs past the table; the clip only keeps padding reads in range.
    q_rows = jnp.clip(q_pos, 0, self.max_len - 1)
    k_rows = jnp.clip(k_pos, 0, self.max_len - 1)
    term = position_logits(self.pos_norm(self.table), self.u_q, self.b_q, self.u_k, self.b_k,
                           q_rows, k_rows)
    if self.relative:
      term = term + t5.bias(self.rel_table, q_pos, k_pos, bidirectional=True,
                            max_distance=self.max_distance)
    return term
