"""T5 relative position bias (Raffel et al., JMLR 2020).

A learned scalar per (distance bucket, head) is added to the attention logits:
``b_ij = B[bucket(j − i), h]``. The table ``B`` (``num_buckets × H``) is created
once and shared by every layer, as in the official code (mesh-tensorflow; in
HF ``T5Attention`` only the first layer has ``has_relative_attention_bias`` and
its ``position_bias`` is reused by the rest).

Public math: :func:`relative_position_bucket` is the mesh-tensorflow /
HF ``T5Attention._relative_position_bucket`` function, number for number:

* ``relative_position = j − i`` (key minus query, "memory minus context").
* ``bidirectional=True`` (encoder): half the buckets per direction; bucket
  ``num_buckets/2 + b`` for keys *after* the query (``j > i``), ``b`` for keys
  at or before it.
* ``bidirectional=False`` (causal decoder): all buckets for ``i − j ≥ 0``;
  keys after the query (masked anyway) fall in bucket 0.
* Within a direction, distances below ``max_exact = buckets_per_direction / 2``
  get their own bucket; larger ones share logarithmically wider buckets up to
  ``max_distance``; beyond it everything lands in the last bucket.

The log is taken in float32, as in both official implementations (mesh-tensorflow
``tf.log`` of float32, HF ``torch.log`` of ``.float()``); tested equal to a float64
re-statement for the default and other usual settings. Where ``log(n/max_exact)``
lands exactly on a bucket boundary in an unusual setting, float32 and float64 can
differ by one bucket (e.g. 256 bidirectional buckets, ``max_distance`` 100, at
``|r| = 80``); this follows the official float32.

Content scaling (``encoding.qk_scaling``). The original computes the logits as
``q·k + b_ij`` with no ``1/sqrt(d_h)``: mesh-tensorflow folds that factor into the
initialisation of the query projection instead (std ``(d_model·d_h)^-0.5`` against
``d_model^-0.5`` for the keys; HF ``T5PreTrainedModel._init_weights``, "Mesh TensorFlow
attention initialization to avoid scaling before softmax", and ``T5Attention.forward``,
whose scores are the bare ``matmul(q, kᵀ)``).

* ``"sqrt"`` (default): ``q·k/sqrt(d_h) + b_ij``, the model's scaling for every scheme.
  The q/k projections here are initialised ``d_model^-0.5`` (LeCun normal) whatever the
  scheme, so these logits have at initialisation the distribution of the original's
  folded-in form (``q/sqrt(d_h)`` here has the variance of the original's ``q``), and the
  bias meets content logits of the same size as in T5. The two differ only in training:
  under Adam, whose steps have about the same size whatever a weight's scale, the
  original's ``sqrt(d_h)`` times smaller query weights move its logits ``sqrt(d_h)`` times
  faster. It also keeps T5 comparable with the other schemes, which all share this scaling.
* ``"none"``: ``q·k + b_ij``, T5's formula as written (for weights ported from a T5
  checkpoint, or to match an implementation that scales nothing). With this framework's
  initialisation, the content logits start ``sqrt(d_h)`` times larger than T5's.

``content_scale()`` passes the choice to the model (``sqrt(d_h)`` for ``"none"``, which
cancels the model's ``1/sqrt(d_h)``); the bias ``b_ij`` is never scaled.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

QK_SCALINGS = ("sqrt", "none")


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """Bucket index (int32, same shape) of ``relative_position = j − i`` (key minus query)."""
  rel = jnp.asarray(relative_position, jnp.int32)
  buckets = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(rel)
  else:
    n = -jnp.minimum(rel, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # max(n, 1) only keeps log() finite where the small branch is taken anyway.
  n_f = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(n_f / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, n, large)


def bias(table_RxH: jax.Array, q_pos: jax.Array, k_pos: jax.Array, *, bidirectional: bool,
         max_distance: int = 128) -> jax.Array:
  """``B[bucket(k_pos_j − q_pos_i), h]`` as an additive logit term ``[B|1, H, Lq, Lk]``.

  ``q_pos``/``k_pos`` are int ``[B|1, L]``; with ``[1, L]`` positions the result
  has batch size 1 (broadcast by the caller, never materialised per example).
  """
  rel = k_pos[:, None, :] - q_pos[:, :, None]  # [B|1, Lq, Lk]: j − i
  buckets = relative_position_bucket(rel, bidirectional, table_RxH.shape[0], max_distance)
  # Gathered from the [H, R] table straight into [H, B|1, Lq, Lk]: moving the head axis past a
  # batch of 1 is free, where [B|1, Lq, Lk, H] -> [B|1, H, Lq, Lk] copied the whole term.
  values = jnp.take(table_RxH.astype(jnp.float32).T, buckets, axis=1)
  return jnp.moveaxis(values, 0, 1)


class Encoding(_Base):
  """One learned bucket table shared by all layers, added to every layer's logits.

  Buckets are bidirectional in the encoder and unidirectional in the causal
  decoder, as T5's encoder and decoder stacks use them. Initialised
  ``N(0, d_model^-0.5)`` like HF ``T5PreTrainedModel._init_weights``.
  ``qk_scaling``: ``"sqrt"`` (default, ``q·k/sqrt(d_h)``) or ``"none"`` (``q·k``, T5's
  formula); see the module docstring.
  """

  num_buckets: int = 32
  max_distance: int = 128
  qk_scaling: str = "sqrt"

  def content_scale(self) -> float:
    # The model multiplies q·k by content_scale()/sqrt(d_h): sqrt(d_h) cancels it for "none".
    return math.sqrt(self.dims.head_dim) if self.qk_scaling == "none" else self.CONTENT_SCALE

  def setup(self):
    self.table = self.param("relative_attention_bias",
                            nn.initializers.normal(self.dims.d_model ** -0.5),
                            (self.num_buckets, self.dims.num_heads), jnp.float32)

  def check(self, max_position):
    del max_position  # every distance has a bucket (the last one is open-ended)
    if self.qk_scaling not in QK_SCALINGS:
      raise ConfigError("config.encoding.qk_scaling",
                        f"unknown {self.qk_scaling!r}; choose one of {', '.join(QK_SCALINGS)} "
                        "(sqrt: q·k/sqrt(d_h), the default; none: q·k, as T5 writes it)")
    min_buckets = 4 if not self.dims.causal else 2
    if self.num_buckets < min_buckets or self.num_buckets % 2:
      raise ConfigError("config.encoding.num_buckets",
                        f"must be an even number >= {min_buckets}, got {self.num_buckets}")
    per_direction = self.num_buckets // (1 if self.dims.causal else 2)
    if self.max_distance <= per_direction // 2:
      raise ConfigError("config.encoding.max_distance",
                        f"must exceed the exact range ({per_direction // 2}) of "
                        f"{self.num_buckets} buckets, got {self.max_distance}")

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k, layer  # one shared table: the term is identical in every layer
    return bias(self.table, q_pos, k_pos, bidirectional=not self.dims.causal,
                max_distance=self.max_distance)
