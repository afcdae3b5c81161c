"""TUPE: untied positional encoding (Ke, He & Liu, ICLR 2021,
"Rethinking Positional Encoding in Language Pre-training").

Positions never enter the token stream. Every layer's logits are

    s_ij = (x_i W^Q)(x_j W^K)ᵀ / sqrt(2·d_h) + (p_i U^Q)(p_j U^K)ᵀ / sqrt(2·d_h)  [+ b_{j−i}]

with ``p = LayerNorm(P)`` rows of a learned absolute table ``P ∈ R^{n × d}`` (see below)
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
Encoder only, as published.

Positions past training. A row of ``P`` gets a gradient only when a real training token
sits at its position, and an untrained row is not harmless here: LayerNorm scales its
N(0, 0.02) initialisation up to the norm of a trained row, and ``U^Q, U^K`` turn it into a
full-size random position term. So, as in :mod:`posenc.encodings.hierarchical`, the table
has by default exactly ``n = Dims.train_positions`` rows (``max_len = 0``: the training
bound, input plus answer of the longest training sequence plus the offset, or
``positions.max_position`` for randomized positions / random offsets), and what a position
``≥ n`` receives is ``fallback``:

* ``"clamp"`` (default): the last trained row, ``p_{n−1}``: every later position has
  position ``n − 1``'s term (attention among them is content only, plus that constant);
* ``"error"``: a run that needs a position ``≥ n`` is refused before any compute,
  naming ``config.encoding.fallback``.

An explicit ``max_len`` sets the parameter's rows (e.g. 128 or 1,024, the table of runs
made before this contract, so that they load with ``config.init.from_workdir``), and still
only the first ``min(max_len, n)`` rows are read as positions: rows past the training
bound are never read. With a fixed ``positions.offset``, rows below the offset are never
trained either (use randomized positions or a random offset if that matters).
``results.json``'s ``encoding_report`` records ``table_rows``, ``trained_rows`` (those read),
``train_positions`` and ``fallback_clamp`` (1: clamp, 0: error).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings import learned, t5
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

  max_len: int = 0  # 0: the training bound (Dims.train_positions)
  fallback: str = "clamp"  # a position past the trained rows: "clamp" (the last one) | "error"
  relative: bool = False  # TUPE-R: add the T5 bucketed bias
  num_buckets: int = 32
  max_distance: int = 128

  def rows(self) -> int:
    """Rows of the parameter: ``max_len``, or the training bound when ``max_len`` is 0."""
    return learned.trained_table(self.max_len, self.dims.train_positions)[0]

  def basis(self) -> int:
    """``n``: the rows read as positions, those below the training bound."""
    return learned.trained_table(self.max_len, self.dims.train_positions)[1]

  def setup(self):
    d, h, dh = self.dims.d_model, self.dims.num_heads, self.dims.head_dim
    init = nn.initializers.normal(0.02)
    self.table = self.param("pos", init, (self.rows(), d), jnp.float32)
    self.pos_norm = nn.LayerNorm(epsilon=1e-5)  # fairseq LayerNorm default
    self.u_q = self.param("pos_q_kernel", init, (d, h, dh), jnp.float32)
    self.b_q = self.param("pos_q_bias", nn.initializers.zeros, (h, dh), jnp.float32)
    self.u_k = self.param("pos_k_kernel", init, (d, h, dh), jnp.float32)
    self.b_k = self.param("pos_k_bias", nn.initializers.zeros, (h, dh), jnp.float32)
    if self.relative:
      self.rel_table = self.param("relative_attention_bias", nn.initializers.normal(1.0),
                                  (self.num_buckets, h), jnp.float32)

  def check(self, max_position):
    learned.check_trained_table(self.max_len, self.fallback, max_position,
                                self.dims.train_positions, "the TUPE position table")
    if self.relative:
      if self.num_buckets < 4 or self.num_buckets % 2:
        raise ConfigError("config.encoding.num_buckets",
                          f"must be an even number >= 4, got {self.num_buckets}")
      if self.max_distance <= self.num_buckets // 4:
        raise ConfigError("config.encoding.max_distance",
                          f"must exceed the exact range ({self.num_buckets // 4}) of "
                          f"{self.num_buckets} bidirectional buckets, got {self.max_distance}")

  def report(self, train_positions: int) -> dict:
    """The table's rows, the trained rows read, the training bound and the fallback
    (``results.json``)."""
    del train_positions  # the training program's padded bound; Dims has the real one
    return learned.table_report(self.rows(), self.basis(), self.dims.train_positions,
                                self.fallback)

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k, layer  # parameters shared by all layers: the term is identical in each
    # Only the n trained rows are positions; later ones read row n − 1 (fallback "clamp"; with
    # "error" check() refused the run, and the clip only keeps padding in range).
    n = self.basis()
    q_rows = jnp.clip(q_pos, 0, n - 1)
    k_rows = jnp.clip(k_pos, 0, n - 1)
    term = position_logits(self.pos_norm(self.table[:n]), self.u_q, self.b_q, self.u_k, self.b_k,
                           q_rows, k_rows)
    if self.relative:
      term = term + t5.bias(self.rel_table, q_pos, k_pos, bidirectional=True,
                            max_distance=self.max_distance)
    return term
