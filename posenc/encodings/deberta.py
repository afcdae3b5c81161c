"""DeBERTa disentangled attention (He, Liu, Gao & Chen, ICLR 2021).

    s_ij = [Q_i·K_j + Q_i·K^r_{δ(i,j)} + K_j·Q^r_{δ(i,j)}] / sqrt(3·d_h)

content-to-content, content-to-position (c2p) and position-to-content (p2c).
Following the official code (microsoft/DeBERTa, ``DeBERTa/deberta/
disentangled_attention.py`` and ``da_utils.py``, the v2 path):

* ``δ(i, j) = log_bucket(pos_i − pos_j)`` (query minus key), shifted by the
  span ``s`` (``position_buckets``, or ``max_relative_positions`` when
  ``position_buckets <= 0``) and clamped to the ``2s`` rows of the table:
  ``clamp(δ + s, 0, 2s − 1)``.
* The relative table ``P ∈ R^{2s × d}`` is shared by all layers and LayerNorm'd
  before use (``norm_rel_ebd = layer_norm``); ``K^r = P W^{K,r} + b``,
  ``Q^r = P W^{Q,r} + b`` use per-layer projections (the official
  ``share_att_key = False`` path, ``pos_key_proj`` / ``pos_query_proj`` with
  bias; the ``share_att_key = True`` path would reuse the layer's own q/k
  projections, which the model owns, not the encoding).
* p2c index convention: the official code gathers ``K @ Q^rᵀ`` (key-major) at
  ``clamp(−r_pos + s)`` and transposes. Because ``r_pos[j, i] = bucket(j − i)``
  and the bucket is odd, ``−r_pos[j, i] = bucket(i − j)``: the p2c term for
  query ``i`` and key ``j`` is ``K_j·Q^r`` at the *same* row ``δ(i, j)`` as c2p
  (tested against a literal loop re-statement of the official gathers).
* Scale: all three terms by ``1/sqrt(3·d_h)`` (``scale_factor = 1 + |{c2p, p2c}|``),
  so ``CONTENT_SCALE = 1/sqrt(3)`` and the hook returns ``(c2p + p2c)/sqrt(3·d_h)``.

Not carried over: the enhanced mask decoder (absolute positions added before
the MLM head; these tasks have no MLM head) and dropout on the relative table
(hooks get no train flag). Encoder only, as published.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


@functools.lru_cache(maxsize=None)
def _log_thresholds(bucket_size: int, max_position: int) -> np.ndarray:
  """``U_n = max{a >= mid : a = mid or c(a) <= n}`` for ``n = 1, 2, …`` up to int32 range.

  ``c(a) = ceil(log(a/mid) / log((max_position−1)/mid) · (mid−1))`` is the official
  formula's integer part, evaluated here in float64 numpy exactly as the official
  code does (it is non-decreasing in ``a``), so that ``c(a) = 1 + #{n : U_n < a}``
  reproduces it for every int32 ``a > mid`` without float32 rounding.
  """
  mid = bucket_size // 2
  ratio = np.log((max_position - 1) / mid)
  top = 2.0 ** 31
  n_max = int(np.ceil(np.log(top / mid) / ratio * (mid - 1))) + 1
  n = np.arange(1, n_max + 1, dtype=np.float64)
  estimate = np.floor(mid * np.exp(np.minimum(n * ratio / (mid - 1), np.log(top))))
  candidates = estimate[:, None] + np.arange(-3, 4)  # the exact threshold is within ±1 of the estimate
  with np.errstate(divide="ignore", invalid="ignore"):
    c = np.ceil(np.log(candidates / mid) / ratio * (mid - 1))
  ok = (candidates > mid) & (c <= n[:, None])
  thresholds = np.where(ok, candidates, mid).max(axis=1)
  return np.minimum(thresholds, top - 1).astype(np.int64)


def log_bucket(relative_position: jax.Array, bucket_size: int = 256,
               max_position: int = 512) -> jax.Array:
  """DeBERTa's ``make_log_bucket_position`` for ``relative_position = i − j`` (int32, same shape).

  Identity for ``|r| <= mid = bucket_size/2``; beyond, ``sign(r)·(mid + ceil(log(|r|/mid) /
  log((max_position−1)/mid)·(mid−1)))`` (not clipped: the caller clamps to the table).
  The official code evaluates the log in float64 numpy; float32 would move some
  buckets by one (e.g. ``bucket_size=4, max_position=8`` at ``r = 7``), so the
  ceil is read off integer thresholds precomputed with the official float64
  formula: equal to it for every int32 input.
  """
  mid = bucket_size // 2
  if mid < 2 or max_position - 1 <= mid:
    raise ValueError(f"log buckets need bucket_size >= 4 and max_position > bucket_size/2 + 1, "
                     f"got bucket_size={bucket_size}, max_position={max_position}")
  r = jnp.asarray(relative_position, jnp.int32)
  abs_pos = jnp.abs(r)
  thresholds = jnp.asarray(_log_thresholds(bucket_size, max_position), jnp.int32)
  ceil_part = 1 + jnp.searchsorted(thresholds, abs_pos, side="left").astype(jnp.int32)
  return jnp.where(abs_pos <= mid, r, (mid + ceil_part) * jnp.sign(r))


def span(position_buckets: int, max_relative_positions: int) -> int:
  """Half the number of relative-table rows (official ``pos_ebd_size``)."""
  return position_buckets if position_buckets > 0 else max_relative_positions


def relative_index(q_pos: jax.Array, k_pos: jax.Array, position_buckets: int = 256,
                   max_relative_positions: int = 512) -> jax.Array:
  """Table row of each pair, ``clamp(δ(i, j) + s, 0, 2s − 1)``: int32 ``[B|1, Lq, Lk]``.

  ``δ(i, j) = log_bucket(pos_i − pos_j)`` when ``position_buckets > 0``, else ``pos_i − pos_j``.
  """
  rel = q_pos[:, :, None].astype(jnp.int32) - k_pos[:, None, :].astype(jnp.int32)
  if position_buckets > 0:
    rel = log_bucket(rel, position_buckets, max_relative_positions)
  s = span(position_buckets, max_relative_positions)
  return jnp.clip(rel + s, 0, 2 * s - 1)


def disentangled_terms(q_BxLxHxDh: jax.Array, k_BxLxHxDh: jax.Array, pos_key_NxHxDh: jax.Array,
                       pos_query_NxHxDh: jax.Array, index_BxQxK: jax.Array) -> jax.Array:
  """``Q_i·K^r[index_ij] + K_j·Q^r[index_ij]`` (unscaled c2p + p2c): float32 ``[B, H, Lq, Lk]``.

  Both are a product with the ``2s`` table rows followed by a gather; p2c is
  gathered key-major (``[B, H, Lk, Lq]``) and transposed, as in the official code.
  """
  q = q_BxLxHxDh.astype(jnp.float32)
  k = k_BxLxHxDh.astype(jnp.float32)
  c2p_BxHxQxN = jnp.einsum("bqhd,nhd->bhqn", q, pos_key_NxHxDh.astype(jnp.float32))
  p2c_BxHxKxN = jnp.einsum("bkhd,nhd->bhkn", k, pos_query_NxHxDh.astype(jnp.float32))
  b, h, lq, _ = c2p_BxHxQxN.shape
  lk = p2c_BxHxKxN.shape[2]
  idx = jnp.broadcast_to(index_BxQxK[:, None], (b, h, lq, lk))
  c2p = jnp.take_along_axis(c2p_BxHxQxN, idx, axis=-1)
  p2c = jnp.take_along_axis(p2c_BxHxKxN, jnp.swapaxes(idx, -1, -2), axis=-1)  # [B, H, Lk, Lq]
  return c2p + jnp.swapaxes(p2c, -1, -2)


class Encoding(_Base):
  """Shared LayerNorm'd relative table; per-layer ``K^r``/``Q^r`` projections."""

  MODES = ("encoder",)
  MODE_REASON = ("DeBERTa is published only as a bidirectional encoder, with two-sided "
                 "log buckets and masked-LM pre-training")
  CONTENT_SCALE = 1.0 / math.sqrt(3.0)  # content q·k / sqrt(3·d_h)

  position_buckets: int = 256
  max_relative_positions: int = 512

  def setup(self):
    d, h, dh = self.dims.d_model, self.dims.num_heads, self.dims.head_dim
    rows = 2 * span(self.position_buckets, self.max_relative_positions)
    init = nn.initializers.normal(0.02)  # official initializer_range; zero biases
    self.rel_embeddings = self.param("rel_embeddings", init, (rows, d), jnp.float32)
    self.rel_norm = nn.LayerNorm(epsilon=1e-7)  # official layer_norm_eps
    self.pos_key_w = [self.param(f"layer{l}_pos_key_proj_kernel", init, (d, h, dh), jnp.float32)
                      for l in range(self.dims.num_layers)]
    self.pos_key_b = [self.param(f"layer{l}_pos_key_proj_bias", nn.initializers.zeros, (h, dh),
                                 jnp.float32) for l in range(self.dims.num_layers)]
    self.pos_query_w = [self.param(f"layer{l}_pos_query_proj_kernel", init, (d, h, dh), jnp.float32)
                        for l in range(self.dims.num_layers)]
    self.pos_query_b = [self.param(f"layer{l}_pos_query_proj_bias", nn.initializers.zeros, (h, dh),
                                   jnp.float32) for l in range(self.dims.num_layers)]

  def check(self, max_position):
    del max_position  # distances past the table clamp to its last row, as in the official code
    if self.position_buckets > 0:
      if self.position_buckets < 4 or self.position_buckets % 2:
        raise ConfigError("config.encoding.position_buckets",
                          f"must be an even number >= 4 (or <= 0 for no log buckets), "
                          f"got {self.position_buckets}")
      if self.max_relative_positions - 1 <= self.position_buckets // 2:
        raise ConfigError("config.encoding.max_relative_positions",
                          f"must exceed position_buckets/2 + 1 = {self.position_buckets // 2 + 1} "
                          f"for the log buckets, got {self.max_relative_positions}")
    elif self.max_relative_positions < 1:
      raise ConfigError("config.encoding.max_relative_positions",
                        f"must be >= 1 without log buckets, got {self.max_relative_positions}")

  def relative_table(self) -> jax.Array:
    """The LayerNorm'd shared table ``[2s, d]``."""
    return self.rel_norm(self.rel_embeddings)

  def logits(self, q, k, q_pos, k_pos, layer):
    rel_NxD = self.relative_table()
    pos_key = jnp.einsum("nc,chd->nhd", rel_NxD, self.pos_key_w[layer]) + self.pos_key_b[layer]
    pos_query = jnp.einsum("nc,chd->nhd", rel_NxD, self.pos_query_w[layer]) + self.pos_query_b[layer]
    index = relative_index(q_pos, k_pos, self.position_buckets, self.max_relative_positions)
    terms = disentangled_terms(q, k, pos_key, pos_query, index)
    return terms / math.sqrt(3.0 * self.dims.head_dim)
