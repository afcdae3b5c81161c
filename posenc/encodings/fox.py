"""Forgetting Attention (FoX; Lin et al., ICLR 2025, "Forgetting Transformer: Softmax
Attention with a Forget Gate"): a data-dependent forget gate instead of any position encoding.

Each head ``h`` of every layer computes, from the layer's input ``x_t`` (the block's
attention input, after the pre-LN if any), a scalar forget gate

  ``f_t = σ(w_h·x_t + b_h)``            (``log f_t = log σ(w_h·x_t + b_h) ≤ 0``)

and adds the sum of the log gates strictly after the key, up to and including the query,
to the content logits:

  ``s_ij = q_i·k_j / sqrt(d_h) + D_ij``,   ``D_ij = Σ_{l=j+1..i} log f_l``   (``D_ii = 0``),

then the causal softmax mixes the values as usual. ``D`` is the cumulative-sum difference
``c_i − c_j`` with ``c_t = Σ_{l ≤ t} log f_l`` (the official ``log_lambda``); :func:`decay_bias`
computes it from the keys each query sees (the attention mask), which is the same thing
under a causal mask and also serves a decoding step, whose query is one slot of the cached
buffer. A gate of 1 everywhere (``log f = 0``) gives plain NoPE attention (with bias-free
projections, see below).

As in the official code (``zhixuan-lin/forgetting-transformer``,
``src/forgetting_transformer/model/forgetting_transformer/modeling_forgetting_transformer.py``,
``ForgettingAttentionLayer`` with its defaults: ``fgate_type="full"``, ``use_rope=False``;
``src/forgetting_transformer/ops/forgetting_attention.py``, where ``log_lambda =
cumsum(log_fgate)`` is added as ``log_lambda_i − log_lambda_j`` inside a causal softmax):

* one ``Linear(d_model → H)`` with a bias per layer gives the gate logits; its weight is
  drawn N(0, 0.02) and its bias starts at 0 (the layer's ``_initialize_weights``), so every
  gate starts near ``σ(0) = 1/2``;
* the q, k, v and output projections carry no bias (``bias=False``); here they are drawn
  like the model's own projections (LeCun normal). So FoX differs from this framework's NoPE
  (``none.py``) by the gate and by those four biases: NoPE's projections are the model's own,
  whose q/k/v carry a bias (``Encoding.QKV_BIAS``, True by default; ``posenc/model.py``) and
  whose output projection always does. A gate of 1 everywhere is NoPE without those biases;
* no other position encoding: FoX (LLaMA) is a NoPE Transformer plus the gate. The "Pro"
  block's extras (output gate, QK-norm, key/value shift) are not part of this scheme.

How it uses the hook contract (no scheme name in the model): the scheme owns its
projections (``projection``) and its attention (``attend``). The key projection returns
``[B, L, H, d_h + 1]``: the key and, in the last channel, ``log f_t`` of that token, so
the model's key/value cache stores every token's log gate next to its key and a decoding
step sees the gates of the whole buffer (keys are float32 whatever the activation dtype, so
the gate sums stay float32). Causal only: the gate sums run from the key to the
query, a direction an encoder does not have.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base

GATE_INIT_STD = 0.02  # the official initializer_range for the gate's weight


def decay_bias(log_f: jax.Array, mask: jax.Array) -> jax.Array:
  """``D_ij = Σ_l [j < l] mask_il · log f_l``: float32 ``[B, H, Lq, Lk]``.

  ``log_f``: the log forget gate of every key slot, ``[B, Lk, H]``; ``mask``: boolean,
  broadcastable to ``[B, H, Lq, Lk]`` (which keys each query sees: padding, causality and the
  decoding step all in it). Under a causal mask this is ``Σ_{l=j+1..i} log f_l =
  c_i − c_j`` with ``c = cumsum(log f)``; entries of keys the query does not see are
  meaningless (they are masked afterwards).
  """
  lf = jnp.moveaxis(jnp.asarray(log_f, jnp.float32), 1, 2)[:, :, None, :]  # [B, H, 1, Lk]
  g = jnp.where(mask, lf, 0.0)
  from_j = jax.lax.cumsum(g, axis=g.ndim - 1, reverse=True)  # Σ_{l ≥ j}
  return from_j - g


def forgetting_attention(q: jax.Array, k: jax.Array, v: jax.Array, log_f: jax.Array,
                         mask: jax.Array, scale: float | None = None
                         ) -> tuple[jax.Array, jax.Array]:
  """``softmax(q·k·scale + D)·v`` over the keys each query sees.

  ``q [B, Lq, H, d]``, ``k, v [B, Lk, H, d]``, ``log_f [B, Lk, H]`` (≤ 0), ``mask`` boolean
  broadcastable to ``[B, H, Lq, Lk]``; ``scale`` defaults to ``1/sqrt(d)``. Returns the
  output ``[B, Lq, H, d]`` and the weights float32 ``[B, H, Lq, Lk]``.
  """
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  s = s + decay_bias(log_f, mask)
  w = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", w.astype(v.dtype), v), w


class Encoding(_Base):
  """Owns each layer's projections (the key carries ``log f``) and its forgetting attention."""

  MODES = ("decoder",)
  MODE_REASON = ("its forget gates are summed from each key up to the query, "
                 "which needs a causal order")

  def setup(self):
    h, dh, d = self.dims.num_heads, self.dims.head_dim, self.dims.d_model
    dense = lambda features, axis, name: nn.DenseGeneral(features, axis=axis, use_bias=False,
                                                         name=name)
    self.kernels = [{kind: dense((h, dh), -1, f"layer{i}_{kind}")
                     for kind in ("query", "key", "value")}
                    | {"out": dense(d, (-2, -1), f"layer{i}_out")}
                    for i in range(self.dims.num_layers)]
    self.gates = [nn.Dense(h, kernel_init=nn.initializers.normal(GATE_INIT_STD),
                           bias_init=nn.initializers.zeros, name=f"layer{i}_fgate")
                  for i in range(self.dims.num_layers)]

  def projection(self, x, kind, layer):
    """query/value: ``[B, L, H, d_h]``; key: ``[B, L, H, d_h + 1]`` (``log f`` last); out: ``[B, L, D]``."""
    y = self.kernels[layer][kind](x).astype(x.dtype)
    if kind != "key":
      return y
    log_f = jax.nn.log_sigmoid(self.gates[layer](x.astype(jnp.float32)))  # [B, L, H]
    # float32 whatever the activation dtype: the gates are summed over the whole context.
    return jnp.concatenate([y.astype(jnp.float32), log_f[..., None]], axis=-1)

  def attend(self, q, k, v, q_pos, k_pos, mask, layer):
    del q_pos, k_pos, layer  # FoX reads no positions: the gates are the only order signal
    return forgetting_attention(q, k[..., :-1], v, k[..., -1].astype(jnp.float32), mask)
