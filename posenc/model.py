"""One Transformer, two modes: an encoder transducer and a causal decoder.

The position encoding is a module (``posenc.encodings``) whose hooks are called
at fixed points; the model never looks at the scheme's name. Without a
``logits``/``values`` hook, attention on an accelerator is
``jax.nn.dot_product_attention`` (fused kernels); otherwise (and on CPUs, where the
explicit form is faster) logits are built explicitly and the scheme's additive term
is added in float32. A scheme with ``attend`` forms the weights and mixes the values
itself; one with ``projection`` owns the q/k/v and output projections.

Incremental decoding (greedy answers in ``posenc.decoding``): ``decode="prefill"``
runs the full forward pass and also stores every layer's keys and values (after the
scheme's ``project``) in the ``"kv"`` collection; ``decode="step"`` then reads one
token at a traced ``index`` and attends to the stored keys, writing its own in
place. Hooks see the new token's positions for the query and the whole buffer's
positions for the keys, so every scheme whose hooks are functions of positions
(all but the sequence-reading ``conv`` and the GRU form of ``recurrent``, whose
``Encoding.incremental()`` is False) decodes with the cache.

Shapes: ``B`` batch, ``L`` sequence, ``D`` width, ``H`` heads, ``Dh`` head width.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# flax's nn.Dropout with the same masks, drawn by one fused kernel (posenc/dropout.py).
from posenc.dropout import Dropout
from posenc.encodings.base import Encoding

_NEG = -1e30
# Explicit attention without a values hook or captured weights normalises after the value
# product (see _attention); False: jax.nn.softmax first (benchmarks compare the two).
NORMALIZE_AFTER_VALUES = True


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  output_vocab_size: int
  d_model: int = 64
  num_heads: int = 8
  num_layers: int = 5
  d_ff: int = 256
  # Residual dropout, where Vaswani et al. (2017, sec. 5.4) and Ruoss et al.'s reference
  # encoder put it: on the embeddings (after the position encoding is added) and on each
  # sub-layer's output before the residual sum; not inside the FFN.
  dropout: float = 0.1
  pre_ln: bool = False
  causal: bool = False
  embed_scale: bool = True  # multiply token embeddings by sqrt(D)
  activation: str = "relu"
  tie_embeddings: bool = False
  dtype: str = "float32"
  # "auto": jax.nn.dot_product_attention on accelerators, explicit einsums on CPUs;
  # "fused" / "explicit" force one (for schemes without logits/values hooks).
  attention: str = "auto"
  # Dropout masks of [B, L, ...] activations are the ones of [B, dropout_mask_length, ...]
  # cut to L rows (posenc.dropout.Dropout), so a training program padded to a shorter
  # bucket drops what the longest one drops; 0: each input's own length.
  dropout_mask_length: int = 0


class Transformer(nn.Module):
  """``__call__(tokens [B,L], positions [B|1,L], valid [B,L]) -> logits [B,L,V_out]``."""

  cfg: ModelConfig
  encoding: Encoding
  # Inspection: compute attention explicitly and ``sow`` each layer's weights
  # ([B, H, L, L]) into the "intermediates" collection as ``attention_<layer>``.
  capture_attention: bool = False

  def _attention(self, x, pos, mask, layer, train, *, decode=None, index=None, k_pos=None,
                 valid=None):
    """``pos`` are the positions of the rows of ``x``; ``k_pos`` those of the keys (step mode);
    ``valid`` the real tokens of the whole sequence (buffer)."""
    cfg, enc = self.cfg, self.encoding
    heads, dh = cfg.num_heads, cfg.d_model // cfg.num_heads
    dense = lambda n: nn.DenseGeneral((heads, dh), use_bias=enc.QKV_BIAS, dtype=self._dtype,
                                      name=f"layer{layer}_{n}")
    if hasattr(enc, "projection"):  # the scheme owns the q/k/v/out projections
      q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh = (enc.projection(x, n, layer) for n in ("query", "key", "value"))
    else:
      q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh = dense("query")(x), dense("key")(x), dense("value")(x)
    if k_pos is None:
      k_pos = pos
    if hasattr(enc, "project"):
      extra = {"context": k_pos} if enc.PROJECT_CONTEXT else {}
      if enc.PROJECT_VALID:
        extra["valid"] = valid
      q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh = enc.project(
          q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, pos, pos, layer, **extra)
    if decode is not None:
      cached_k = self.variable("kv", f"layer{layer}_cached_key", jnp.zeros, k_BxLxHxDh.shape, k_BxLxHxDh.dtype)
      cached_v = self.variable("kv", f"layer{layer}_cached_value", jnp.zeros, v_BxLxHxDh.shape, v_BxLxHxDh.dtype)
      if decode == "prefill":
        cached_k.value, cached_v.value = k_BxLxHxDh, v_BxLxHxDh
      else:  # the new token's key and value go to its slot; it attends to the whole buffer
        put = lambda buf, new: jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), index, axis=1)
        cached_k.value = put(cached_k.value, k_BxLxHxDh)
        cached_v.value = put(cached_v.value, v_BxLxHxDh)
        k_BxLxHxDh, v_BxLxHxDh = cached_k.value, cached_v.value
    scale = enc.content_scale() / math.sqrt(dh)
    # The fused kernel pays on accelerators; XLA's CPU lowering of it was 2x slower than these
    # einsums at evaluation lengths (sinusoidal over 41..500: 85 s against ALiBi's 42 s).
    explicit = (cfg.attention == "explicit"
                or (cfg.attention == "auto" and jax.default_backend() == "cpu"))
    if hasattr(enc, "attend"):  # the scheme forms the weights and mixes the values itself
      o_BxLxHxDh, w_BxHxLxL = enc.attend(q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh, pos, k_pos, mask, layer)
      if self.capture_attention and w_BxHxLxL is not None:
        self.sow("intermediates", f"attention_{layer}", w_BxHxLxL)
    elif explicit or hasattr(enc, "logits") or hasattr(enc, "values") or self.capture_attention:
      s_BxHxLxL = jnp.einsum("bqhd,bkhd->bhqk", q_BxLxHxDh, k_BxLxHxDh,
                             preferred_element_type=jnp.float32) * scale
      if hasattr(enc, "logits"):
        extra = {"mask": mask} if enc.LOGITS_MASK else {}
        s_BxHxLxL = s_BxHxLxL + enc.logits(q_BxLxHxDh, k_BxLxHxDh, pos, k_pos, layer, **extra)
      s_BxHxLxL = jnp.where(mask, s_BxHxLxL, _NEG)
      if NORMALIZE_AFTER_VALUES and not (self.capture_attention or hasattr(enc, "values")):
        # Softmax normalised after the value product: the [B, L, H, Dh] output is scaled
        # instead of the [B, H, L, L] weights, which saves a pass over the weights each way
        # and, on XLA:CPU, a transposed copy of them (the paper preset's training step on
        # a 2-core CPU: 0.885x the CPU time). Same math, rounding apart.
        e_BxHxLxL = jnp.exp(s_BxHxLxL - jax.lax.stop_gradient(
            jnp.max(s_BxHxLxL, axis=-1, keepdims=True)))
        o_BxLxHxDh = jnp.einsum("bhqk,bkhd->bqhd", e_BxHxLxL.astype(v_BxLxHxDh.dtype), v_BxLxHxDh)
        inv_BxLxH = (1.0 / jnp.sum(e_BxHxLxL, axis=-1)).transpose(0, 2, 1)
        o_BxLxHxDh = o_BxLxHxDh * inv_BxLxH[..., None].astype(o_BxLxHxDh.dtype)
      else:
        w_BxHxLxL = jax.nn.softmax(s_BxHxLxL, axis=-1)
        if self.capture_attention:
          self.sow("intermediates", f"attention_{layer}", w_BxHxLxL)
        o_BxLxHxDh = jnp.einsum("bhqk,bkhd->bqhd", w_BxHxLxL.astype(v_BxLxHxDh.dtype), v_BxLxHxDh)
        if hasattr(enc, "values"):
          o_BxLxHxDh = o_BxLxHxDh + enc.values(w_BxHxLxL, pos, k_pos, layer).astype(o_BxLxHxDh.dtype)
    else:
      o_BxLxHxDh = jax.nn.dot_product_attention(q_BxLxHxDh, k_BxLxHxDh, v_BxLxHxDh,
                                                mask=mask, scale=scale)
    if hasattr(enc, "projection"):
      return enc.projection(o_BxLxHxDh, "out", layer)
    return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), dtype=self._dtype,
                           name=f"layer{layer}_out")(o_BxLxHxDh)

  def _ffn(self, x, layer):
    cfg = self.cfg
    act = {"relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}[cfg.activation]
    h = act(nn.Dense(cfg.d_ff, dtype=self._dtype, name=f"layer{layer}_ff1")(x))
    return nn.Dense(cfg.d_model, dtype=self._dtype, name=f"layer{layer}_ff2")(h)

  @property
  def _dtype(self):
    """Activations and matmuls (``model.dtype``); parameters stay float32 (flax's default
    ``param_dtype``), LayerNorm's statistics, the attention logits and softmax, the scheme's
    position math and the output logits run in float32 whatever it is."""
    return jnp.dtype(self.cfg.dtype)

  @nn.compact
  def __call__(self, tokens, positions, valid, *, train: bool = False, decode: str | None = None,
               index=None):
    """Logits of every row of ``tokens``.

    ``decode``: None (a plain forward pass); ``"prefill"`` (the same, also filling the
    ``"kv"`` collection, which must be mutable); ``"step"``: ``tokens`` is ``[B, 1]``, the
    token at buffer slot ``index`` (int32, may be traced), while ``positions`` and ``valid``
    describe the whole buffer ``[B|1, P]``; returns ``[B, 1, V_out]``.
    """
    cfg, enc = self.cfg, self.encoding
    if decode not in (None, "prefill", "step"):
      raise ValueError(f"decode must be None, 'prefill' or 'step', got {decode!r}")
    if decode is not None and (train or not cfg.causal):
      raise ValueError("incremental decoding needs a causal model in evaluation (train=False)")
    if decode is not None and not enc.incremental():
      raise ValueError(f"{type(enc).__module__}: this scheme reads the token sequence in its "
                       "embedding and cannot decode incrementally")
    k_pos = None
    if decode == "step":
      k_pos = positions
      positions = jax.lax.dynamic_slice_in_dim(positions, index, 1, axis=1)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model,
                     embedding_init=nn.initializers.normal(cfg.d_model ** -0.5), name="embed")
    if hasattr(enc, "token_embed"):  # the scheme owns the token embedding (complex order)
      x_BxLxD = enc.token_embed(tokens, positions).astype(self._dtype)
    else:
      x_BxLxD = embed(tokens).astype(self._dtype)
    if cfg.embed_scale:
      x_BxLxD = x_BxLxD * math.sqrt(cfg.d_model)
    window = enc.embed_window() if hasattr(enc, "embed") and decode is not None else None
    if window is not None:
      # The hook reads the `window` slots before each output: the buffer keeps its inputs,
      # and a step embeds the new token from the window that ends at its slot.
      inputs = self.variable("kv", "embed_inputs", jnp.zeros,
                             (x_BxLxD.shape[0], valid.shape[1], x_BxLxD.shape[2]), x_BxLxD.dtype)
      if decode == "prefill":
        inputs.value = x_BxLxD
        x_BxLxD = enc.embed(x_BxLxD, positions, **({"valid": valid} if enc.EMBED_VALID else {}))
      else:
        inputs.value = jax.lax.dynamic_update_slice_in_dim(inputs.value, x_BxLxD, index, axis=1)
        take = lambda a: jax.lax.dynamic_slice_in_dim(
            jnp.pad(a, [(0, 0), (window, 0)] + [(0, 0)] * (a.ndim - 2)), index, window + 1, axis=1)
        extra = {}
        if enc.EMBED_VALID:  # slots before 0 are not real: the hook reads them as zeros
          extra["valid"] = take(jnp.broadcast_to(valid, x_BxLxD.shape[:1] + valid.shape[1:]))
        x_BxLxD = enc.embed(take(inputs.value), take(k_pos), **extra)[:, -1:]
    elif hasattr(enc, "embed"):
      extra = {}
      if enc.EMBED_VALID:  # the rows' real tokens (in a step, the new token's entry)
        extra["valid"] = (valid if decode != "step"
                          else jax.lax.dynamic_slice_in_dim(valid, index, 1, axis=1))
      x_BxLxD = enc.embed(x_BxLxD, positions, **extra)
    x_BxLxD = Dropout(cfg.dropout, mask_length=cfg.dropout_mask_length)(
        x_BxLxD, deterministic=not train)

    length = tokens.shape[1]
    mask = valid[:, None, None, :]  # keys that exist
    if decode == "step":  # the keys up to and including the new token
      mask = mask & (jnp.arange(valid.shape[1]) <= index)[None, None, None, :]
    elif cfg.causal:
      mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
    attend = lambda h, layer: self._attention(h, positions, mask, layer, train, decode=decode,
                                              index=index, k_pos=k_pos, valid=valid)
    drop = lambda h: Dropout(cfg.dropout, mask_length=cfg.dropout_mask_length)(
        h, deterministic=not train)
    for layer in range(cfg.num_layers):
      if hasattr(enc, "layer_input"):
        x_BxLxD = enc.layer_input(x_BxLxD, positions, layer)
      if cfg.pre_ln:
        h = nn.LayerNorm(dtype=self._dtype, name=f"layer{layer}_ln1")(x_BxLxD)
        x_BxLxD = x_BxLxD + drop(attend(h, layer))
        h = nn.LayerNorm(dtype=self._dtype, name=f"layer{layer}_ln2")(x_BxLxD)
        x_BxLxD = x_BxLxD + drop(self._ffn(h, layer))
      else:
        h = x_BxLxD + drop(attend(x_BxLxD, layer))
        x_BxLxD = nn.LayerNorm(dtype=self._dtype, name=f"layer{layer}_ln1")(h)
        h = x_BxLxD + drop(self._ffn(x_BxLxD, layer))
        x_BxLxD = nn.LayerNorm(dtype=self._dtype, name=f"layer{layer}_ln2")(h)
    if cfg.pre_ln:
      x_BxLxD = nn.LayerNorm(dtype=self._dtype, name="final_ln")(x_BxLxD)
    if cfg.tie_embeddings:
      if cfg.output_vocab_size != cfg.vocab_size:
        raise ValueError("tie_embeddings needs output_vocab_size == vocab_size")
      return embed.attend(x_BxLxD.astype(jnp.float32))
    return nn.Dense(cfg.output_vocab_size, dtype=jnp.float32, name="head")(x_BxLxD)
