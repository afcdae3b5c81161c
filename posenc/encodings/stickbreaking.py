"""Stick-breaking attention (Tan et al., ICLR 2025, "Scaling Stick-Breaking Attention: An
Efficient Implementation and In-depth Study"): no softmax and no position encoding.

For query ``i`` and the keys ``j`` before it, with ``z_ij = q_i·k_j / sqrt(d_h)`` and
``β_ij = σ(z_ij)``, each key in turn, nearest first, breaks off a fraction ``β`` of the
stick the nearer keys left over:

  ``A_ij = β_ij · Π_{j<k<i} (1 − β_ik)``,

computed in log space: ``log A_ij = log σ(z_ij) + Σ_{j<k<i} log σ(−z_ik)``. The weights of a
row sum to at most 1; the remainder ``r_i = 1 − Σ_j A_ij`` goes to the query's own value
(``o_i = Σ_j A_ij v_j + r_i v_i``), as the official reference test does. Ordering the keys
by nearness is what tells the model where a token is: there is no other position signal.

As in the official code: ``shawntan/stickbreaking-attention``,
``stickbreaking_attention/sb_ref.py`` (``stickbreaking``: ``log_z = logsigmoid(logits)``,
``log_beta = logsigmoid(−logits)``, the masked ``log_beta`` summed over the keys between
by ``cum_weight = tril(ones, −1)``, ``att = exp(log_z + re_cum_log_beta)``, ``rem = 1 −
att.sum(−1)``) and ``tests/test_attn.py`` (``ref_fwd``: ``mask = triu(ones, 0)``, so by
default a query does not attend to itself, ``attend_current=True`` uses ``triu(ones, 1)``;
``o = o + rem[..., None] * v``); flash-linear-attention's ``fla/ops/stickbreaking_attn/
naive.py`` (``naive_stickbreaking_attn``) restates the same. The model code that ships with
it (IBM's dolomite-engine, ``sb_remainder``) adds ``rem·v_i`` the same way.

Options: ``attend_current`` (default False, the official default: the query's own key is
not a stick; True: it is the first one) and ``remainder`` (default True: ``r_i v_i`` is
added; False: the leftover weight is dropped, so a first token's output is zero).

In this framework the keys a query sees come from the attention mask (padding, causality,
a decoding step's buffer), so "the keys between" are the seen keys between, and "the query
itself" is the last key it sees (the diagonal in a full pass, the new token's slot in a
decoding step). Causal only: the stick is broken from the query backwards.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base


def weights(logits: jax.Array, mask: jax.Array, *, attend_current: bool = False,
            remainder: bool = True) -> jax.Array:
  """Stick-breaking weights float32 ``[B, H, Lq, Lk]`` from ``logits z [B, H, Lq, Lk]``.

  ``mask``: boolean, broadcastable to the logits: which keys each query sees, the query's
  own key the last of them (causal). ``A_ij = σ(z_ij)·Π_{j<k<i, seen} σ(−z_ik)`` over the
  seen keys ``j < i`` (and ``j = i`` if ``attend_current``); with ``remainder`` the row's
  leftover ``1 − Σ_j A_ij`` is put on the query's own key, so the row sums to 1 and
  ``weights @ v`` is the output ``Σ_j A_ij v_j + r_i v_i``.
  """
  z = jnp.asarray(logits, jnp.float32)
  mask = jnp.broadcast_to(mask, z.shape)
  seen_after = jax.lax.cumsum(mask.astype(jnp.int32), axis=z.ndim - 1, reverse=True)
  own = mask & (seen_after == 1)  # the last seen key of the row: the query itself
  sticks = mask if attend_current else mask & ~own
  log_rest = jnp.where(sticks, jax.nn.log_sigmoid(-z), 0.0)  # log(1 − β), 0 off the sticks
  between = jax.lax.cumsum(log_rest, axis=z.ndim - 1, reverse=True) - log_rest  # Σ_{k > j}
  a = jnp.where(sticks, jnp.exp(jnp.where(sticks, jax.nn.log_sigmoid(z) + between, 0.0)), 0.0)
  if remainder:
    a = a + jnp.where(own, 1.0 - a.sum(axis=-1, keepdims=True), 0.0)
  return a


def stickbreaking_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                            scale: float | None = None, attend_current: bool = False,
                            remainder: bool = True) -> tuple[jax.Array, jax.Array]:
  """``q [B, Lq, H, d]``, ``k, v [B, Lk, H, d]`` -> output ``[B, Lq, H, d]``, weights ``[B, H, Lq, Lk]``.

  ``scale`` defaults to ``1/sqrt(d)`` (the official ``inv_temp``); see :func:`weights`.
  """
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  z = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  w = weights(z, mask, attend_current=attend_current, remainder=remainder)
  return jnp.einsum("bhqk,bkhd->bqhd", w.astype(v.dtype), v), w


class Encoding(_Base):
  """Replaces each layer's softmax by stick-breaking weights; no position signal otherwise."""

  MODES = ("decoder",)
  MODE_REASON = "the stick is broken from the query backwards over the keys before it"

  attend_current: bool = False  # the query's own key is a stick too (the first one)
  remainder: bool = True        # the leftover weight goes to the query's own value

  def attend(self, q, k, v, q_pos, k_pos, mask, layer):
    del q_pos, k_pos, layer  # no positions: nearness is the order of the keys
    return stickbreaking_attention(q, k, v, mask, attend_current=self.attend_current,
                                   remainder=self.remainder)
