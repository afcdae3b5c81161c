"""Relative position representations (Shaw, Uszkoreit & Vaswani, NAACL 2018).

``e_ij = q_i·(k_j + a^K_ij) / sqrt(d_h)`` and ``z_i = Σ_j α_ij (v_j + a^V_ij)``,
with ``a^K_ij = w^K[relative_index(i, j)]``, ``a^V_ij = w^V[relative_index(i, j)]``.
Each layer has its own two tables of ``2k+1`` rows of width ``d_h``, shared by
the heads (tensor2tensor's ``dot_product_attention_relative``, whose variables
``relative_positions_keys`` / ``relative_positions_values`` live in each layer's
attention scope). Initialised glorot-uniform, TF's ``get_variable`` default.

Convention (tensor2tensor ``_generate_relative_positions_matrix``): the index is
``clip(j − i, −k, k) + k`` with ``j`` the key and ``i`` the query, computed from
the explicit positions, so randomized positions work unchanged.

Nothing of shape ``[B, H, L, L, d_h]`` is built: the key term is ``q @ w^Kᵀ``
(``[B, H, L, 2k+1]``) followed by a gather, and the value term first sums the
attention weights that fall in each of the ``2k+1`` buckets (``[B, H, L, 2k+1]``)
and then multiplies by ``w^V``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


def relative_index(q_pos: jax.Array, k_pos: jax.Array, max_distance: int) -> jax.Array:
  """``clip(k_pos_j − q_pos_i, −k, k) + k``: int32 ``[B|1, Lq, Lk]`` in ``[0, 2k]``."""
  rel = k_pos[:, None, :].astype(jnp.int32) - q_pos[:, :, None].astype(jnp.int32)
  return jnp.clip(rel, -max_distance, max_distance) + max_distance


def key_logits(q_BxLxHxDh: jax.Array, table_RxDh: jax.Array, index_BxQxK: jax.Array) -> jax.Array:
  """``q_i · a^K_ij`` (unscaled), float32 ``[B, H, Lq, Lk]``, via ``q @ tableᵀ`` and a gather."""
  s_BxHxQxR = jnp.einsum("bqhd,rd->bhqr", q_BxLxHxDh.astype(jnp.float32),
                         table_RxDh.astype(jnp.float32))
  b, h, lq, _ = s_BxHxQxR.shape
  idx = jnp.broadcast_to(index_BxQxK[:, None], (b, h, lq, index_BxQxK.shape[-1]))
  return jnp.take_along_axis(s_BxHxQxR, idx, axis=-1)


def bucket_weights(weights_BxHxQxK: jax.Array, index_BxQxK: jax.Array, num_buckets: int) -> jax.Array:
  """``W[b, h, i, r] = Σ_j weights[b, h, i, j]·[index[i, j] = r]``: float32 ``[B, H, Lq, R]``.

  Positions shared by the batch (``index`` of batch 1) use a one-hot matmul
  (``[Lq, Lk, R]``, batch-independent); per-example positions use a
  scatter-add, which never builds a ``[B, Lq, Lk, R]`` one-hot.
  """
  w = weights_BxHxQxK.astype(jnp.float32)
  if index_BxQxK.shape[0] == 1:
    onehot_QxKxR = jax.nn.one_hot(index_BxQxK[0], num_buckets, dtype=jnp.float32)
    return jnp.einsum("bhqk,qkr->bhqr", w, onehot_QxKxR)
  b, h, lq, lk = w.shape
  bi = jnp.arange(b)[:, None, None, None]
  hi = jnp.arange(h)[None, :, None, None]
  qi = jnp.arange(lq)[None, None, :, None]
  ri = index_BxQxK[:, None]
  return jnp.zeros((b, h, lq, num_buckets), jnp.float32).at[bi, hi, qi, ri].add(w)


def value_term(weights_BxHxQxK: jax.Array, table_RxDh: jax.Array, index_BxQxK: jax.Array) -> jax.Array:
  """``Σ_j α_ij a^V_ij``: float32 ``[B, Lq, H, Dh]``."""
  w_BxHxQxR = bucket_weights(weights_BxHxQxK, index_BxQxK, table_RxDh.shape[0])
  return jnp.einsum("bhqr,rd->bqhd", w_BxHxQxR, table_RxDh.astype(jnp.float32))


class Encoding(_Base):
  """Per-layer key and value tables of ``2·max_distance + 1`` rows, shared by the heads."""

  max_distance: int = 16  # k: relative distances are clipped to [−k, k]

  def setup(self):
    rows, dh = 2 * self.max_distance + 1, self.dims.head_dim
    init = nn.initializers.xavier_uniform()
    self.key_tables = [self.param(f"layer{l}_relative_keys", init, (rows, dh), jnp.float32)
                       for l in range(self.dims.num_layers)]
    self.value_tables = [self.param(f"layer{l}_relative_values", init, (rows, dh), jnp.float32)
                         for l in range(self.dims.num_layers)]

  def check(self, max_position):
    del max_position  # clipping gives every distance a row
    if self.max_distance < 1:
      raise ConfigError("config.encoding.max_distance",
                        f"must be >= 1 (with 0 every pair shares one row and the model has no "
                        f"positions), got {self.max_distance}; Shaw et al. use 16")

  def logits(self, q, k, q_pos, k_pos, layer):
    del k
    index = relative_index(q_pos, k_pos, self.max_distance)
    return key_logits(q, self.key_tables[layer], index) / math.sqrt(self.dims.head_dim)

  def values(self, weights, q_pos, k_pos, layer):
    index = relative_index(q_pos, k_pos, self.max_distance)
    return value_term(weights, self.value_tables[layer], index)
