"""Greedy decoding of a decoder's answers, with a key/value cache.

Teacher-forced accuracy scores each answer token given the *true* earlier answer
tokens; exact match by greedy decoding feeds the model its *own* earlier
predictions, as generation does. In the decoder layout (``posenc.data``) the
prompt ``x_1 … x_l SEP`` fills slots ``0..l`` and answer token ``t`` is predicted
at slot ``l + t``, so with a batch of one input length:

1. prefill: one forward pass over the prompt (slots past ``l`` hold PAD and are
   causally invisible) stores every layer's keys and values and predicts ``y_0``
   at slot ``l``;
2. step ``i = l+1 … l+m−1``: the previous prediction is read at slot ``i``; its
   query attends to the cache, its key and value are written to slot ``i``, and
   it predicts the answer token at slot ``i``.

Every shape is static (the bucket's padded length), ``l`` and ``m`` may be traced,
and the loop is a ``lax.fori_loop`` inside the evaluation program. Schemes whose
embedding reads the whole token sequence (``Encoding.incremental()`` False: the GRU
``recurrent``) decode by recomputing the full forward pass per token, which is also
the reference the cached decoder is tested against (``conv``'s causal convolution reads
a bounded window, which the cache keeps: ``Encoding.embed_window()``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc import data as data_lib


def _column(a: jax.Array, i) -> jax.Array:
  """``a[:, i]`` for a traced ``i`` (``a`` is ``[B, P, ...]``)."""
  return jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)


def _set_column(a: jax.Array, i, value: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_index_in_dim(a, value.astype(a.dtype), i, axis=1)


def greedy(model, variables: dict, batch: dict, *, output_offset: int, answer_length,
           use_cache: bool = True) -> jax.Array:
  """Greedy answers: int32 ``[B, P]``, the predicted answer token at each answer slot.

  ``variables`` are the model's (``params``, and ``cache`` for a scheme's evaluation
  table); ``batch`` is a decoder-layout batch (``tokens``, ``positions``, ``valid``,
  ``length``); ``output_offset`` maps an answer symbol to its token id
  (``NUM_SPECIAL + input_vocab_size``); ``answer_length`` is the batch's number of
  answer slots (may be traced). Entries outside the answer slots are 0.
  """
  tokens, pos, valid = batch["tokens"], batch["positions"], batch["valid"]
  l = jnp.asarray(batch["length"], jnp.int32)
  end = l + jnp.asarray(answer_length, jnp.int32)
  slot = jnp.arange(tokens.shape[1])[None, :]
  prompt = jnp.where(slot <= l, tokens, data_lib.PAD)
  preds = jnp.zeros(tokens.shape, jnp.int32)

  if use_cache and model.encoding.incremental():
    logits, kv = model.apply(variables, prompt, pos, valid, decode="prefill", mutable=["kv"])
    preds = _set_column(preds, l, jnp.argmax(_column(logits, l), axis=-1))

    def step(i, carry):
      preds, kv = carry
      token = _column(preds, i - 1)[:, None] + output_offset
      logits, kv = model.apply({**variables, **kv}, token, pos, valid, decode="step", index=i,
                               mutable=["kv"])
      return _set_column(preds, i, jnp.argmax(logits[:, 0], axis=-1)), kv

    preds, _ = jax.lax.fori_loop(l + 1, end, step, (preds, kv))
    return preds

  def recompute(i, preds):
    # Slots l+1..i hold the predictions made so far (shifted right by one slot).
    fed = jnp.roll(preds, 1, axis=1) + output_offset
    seq = jnp.where(slot <= l, tokens, jnp.where(slot <= i, fed, data_lib.PAD))
    logits = model.apply(variables, seq, pos, valid)
    return _set_column(preds, i, jnp.argmax(_column(logits, i), axis=-1))

  return jax.lax.fori_loop(l, end, recompute, preds)


def scores(preds: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per sequence: exact match (every scored answer token right), fraction right, has any."""
  mask = batch["loss_mask"]
  right = (preds == batch["targets"]) & mask
  count = jnp.sum(mask, axis=1)
  has = count > 0
  exact = has & (jnp.sum(right, axis=1) == count)
  return exact, jnp.sum(right, axis=1) / jnp.maximum(count, 1), has
