"""CoPE (Golovneva et al., 2024, "Contextual Position Encoding: Learning to Count What's
Important"): positions counted by the content, per query.

For query ``i`` and key ``j ≤ i`` (causal mask):

  gates      ``g_ij = σ(q_i·k_j / sqrt(d_h))``   (0 for masked keys)
  positions  ``p_ij = Σ_{t=j..i} g_it``           (:func:`positions`), clamped to ``npos_max − 1``
  logit term ``q_i·e(p_ij)``, with ``e`` interpolated linearly between the
             integer rows ``⌊p⌋`` and ``⌈p⌉`` of a per-layer table ``[d_h, npos_max]``
             (zero init, shared by heads), computed as ``z_i[p] = q_i·e[p]`` for
             integer ``p`` and then interpolated (:func:`interpolate`).

As in the paper's code, the gates use the content logits with the model's
``1/sqrt(d_h)`` scale, the term ``q_i·e`` uses the unscaled query, and the
interpolation weight ``p − ⌊p⌋`` carries the gradient to the gates. Property:
with every gate 1, ``p_ij = i − j + 1``.

The positions need the causal mask inside the hook (the model applies its mask
only after adding this term), so the scheme is valid only in a causal decoder.
Explicit position arrays are not used: CoPE's positions are the gate counts.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


def positions(gates: jax.Array) -> jax.Array:
  """``p_ij = Σ_{t ≥ j} g_it`` over the last axis of ``gates [..., Lq, Lk]``.

  With gates zero after the query (causal), this is ``Σ_{t=j..i} g_it``.
  """
  return jax.lax.cumsum(jnp.asarray(gates, jnp.float32), axis=gates.ndim - 1, reverse=True)


def interpolate(logits_int: jax.Array, pos: jax.Array) -> jax.Array:
  """Linear interpolation of ``logits_int [..., Lq, P]`` (integer positions) at ``pos [..., Lq, Lk]``.

  ``pos`` must lie in ``[0, P − 1]``; returns ``[..., Lq, Lk]``.
  """
  lo = jnp.floor(pos)
  w = pos - lo
  lo_i = lo.astype(jnp.int32)
  hi_i = jnp.ceil(pos).astype(jnp.int32)
  at = lambda idx: jnp.take_along_axis(logits_int, idx, axis=-1)
  return at(hi_i) * w + at(lo_i) * (1.0 - w)


class Encoding(_Base):
  """Adds ``q_i·e(p_ij)`` with contextual positions ``p`` to every layer's logits."""

  MODES = ("decoder",)
  MODE_REASON = ("its positions are cumulative gate sums over the keys up to the query, "
                 "which need a causal mask")

  LOGITS_MASK = True

  npos_max: int = 64  # table rows; positions are clamped to npos_max − 1

  def check(self, max_position):
    if self.npos_max < 2:
      raise ConfigError("config.encoding.npos_max", f"must be >= 2, got {self.npos_max}")

  def setup(self):
    # One table per layer, shared by the heads (the paper's [1, d_h, npos_max]).
    self.tables = [self.param(f"table_layer{l}", nn.initializers.zeros,
                              (self.dims.head_dim, self.npos_max), jnp.float32)
                   for l in range(self.dims.num_layers)]

  def logits(self, q, k, q_pos, k_pos, layer, mask=None):
    del q_pos, k_pos
    if mask is None:  # aligned queries and keys (the model always passes its mask)
      mask = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), bool))
    scale = self.CONTENT_SCALE / jnp.sqrt(jnp.float32(self.dims.head_dim))
    content = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    # Gates count the keys the query sees: up to itself (causal), real tokens only.
    gates = jnp.where(mask, jax.nn.sigmoid(content), 0.0)
    pos = jnp.minimum(positions(gates), self.npos_max - 1)
    logits_int = jnp.einsum("bqhd,dp->bhqp", q.astype(jnp.float32), self.tables[layer])
    return interpolate(logits_int, pos)
