"""Greedy decoding with a key/value cache (posenc.decoding, Transformer(decode=...)).

For every scheme valid in a decoder, with perturbed parameters (several schemes start
at exactly zero, which would hide a wrong cache) and randomized positions (padding
slots hold position 0, which a positions-based causal mask would get wrong):

* the cache is right: feeding the teacher-forced tokens one step at a time gives the
  logits of the full forward pass at every answer slot;
* the cached greedy decoder gives the same answers as the recomputing one.

The recomputing decoder itself is checked against a plain loop that re-runs the
model on the unpadded, growing sequence, appending the argmax each time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
from posenc import decoding, encodings, positions as positions_lib, train
from tests import helpers

DECODER_SCHEMES = [n for n in encodings.names() if "decoder" in encodings.get(n).MODES]
RANDOMIZED = {"positions.kind": "randomized", "positions.max_position": 48}


def _perturbed(params, seed=7, scale=0.2):
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


def _setup(scheme, task="copy", batch_size=3, **overrides):
  c = helpers.config(scheme, **{"model.causal": True, "task.name": task, **overrides})
  s = train.setup(c)
  lengths, padded = s.eval_buckets[-1]
  model = s.model(s.eval_bound(padded))
  params = _perturbed(train.init_state(s, jax.random.PRNGKey(0))["params"])
  variables = {"params": params, **train.eval_cache(s, params)}
  batch_fn = data_lib.make_batch_fn(s.task, positions_lib.make(c.positions, train=False),
                                    batch_size=batch_size, lengths=lengths, padded_length=padded,
                                    causal=True)
  batch = batch_fn(jax.random.PRNGKey(1), len(lengths) - 1)
  return s, model, variables, batch, s.task.output_length(lengths[-1])


@pytest.mark.parametrize("scheme", DECODER_SCHEMES)
def test_cache_matches_full_forward(scheme):
  s, model, variables, batch, out_len = _setup(scheme, **RANDOMIZED)
  offset = data_lib.NUM_SPECIAL + s.task.input_vocab_size
  incremental = model.encoding.incremental()

  @jax.jit
  def run(variables, batch):
    args = (batch["tokens"], batch["positions"], batch["valid"])
    full = model.apply(variables, *args)
    out = {"full": full}
    if incremental:
      l = batch["length"]
      _, kv = model.apply(variables, *args, decode="prefill", mutable=["kv"])

      def step(i, carry):
        logits, kv = carry
        token = jax.lax.dynamic_slice_in_dim(batch["tokens"], i, 1, axis=1)
        new, kv = model.apply({**variables, **kv}, token, batch["positions"], batch["valid"],
                              decode="step", index=i, mutable=["kv"])
        return jax.lax.dynamic_update_slice_in_dim(logits, new, i, axis=1), kv

      out["stepped"], _ = jax.lax.fori_loop(l + 1, l + out_len, step, (jnp.zeros_like(full), kv))
    out["cached"] = decoding.greedy(model, variables, batch, output_offset=offset,
                                    answer_length=out_len)
    out["recomputed"] = decoding.greedy(model, variables, batch, output_offset=offset,
                                        answer_length=out_len, use_cache=False)
    return out

  r = jax.device_get(run(variables, batch))
  l = int(batch["length"])
  if incremental:
    answer = slice(l + 1, l + out_len)
    assert np.all(np.abs(r["full"][:, answer]).max(axis=-1) > 1e-3)  # not trivially zero
    np.testing.assert_allclose(r["stepped"][:, answer], r["full"][:, answer], atol=2e-5, rtol=1e-5)
  else:
    with pytest.raises(ValueError, match="cannot decode incrementally"):
      model.apply(variables, batch["tokens"], batch["positions"], batch["valid"],
                  decode="prefill", mutable=["kv"])
  np.testing.assert_array_equal(r["cached"], r["recomputed"])
  # Only answer slots are written.
  slot = np.arange(r["cached"].shape[1])
  assert np.all(r["cached"][:, (slot < l) | (slot >= l + out_len)] == 0)


@pytest.mark.parametrize("scheme", ["sinusoidal", "alibi", "conv"])
def test_greedy_matches_a_plain_generation_loop(scheme):
  """Independent reference: unpadded sequences, grown one argmax at a time."""
  s, model, variables, batch, out_len = _setup(scheme, batch_size=2)
  offset = data_lib.NUM_SPECIAL + s.task.input_vocab_size
  preds = np.asarray(jax.jit(lambda v, b: decoding.greedy(
      model, v, b, output_offset=offset, answer_length=out_len))(variables, batch))
  l = int(batch["length"])
  tokens = np.asarray(batch["tokens"])
  forward = jax.jit(model.apply)  # one program per sequence length (op by op: dozens each)
  for b in range(tokens.shape[0]):
    seq = list(tokens[b, :l + 1])  # the prompt and SEP
    answer = []
    for _ in range(out_len):
      n = len(seq)
      logits = forward(variables, jnp.asarray([seq]), jnp.arange(n)[None], jnp.ones((1, n), bool))
      answer.append(int(np.argmax(logits[0, -1])))
      seq.append(answer[-1] + offset)
    np.testing.assert_array_equal(preds[b, l:l + out_len], answer)


def test_scores_exact_match_and_fraction():
  batch = {"targets": jnp.asarray([[0, 5, 6, 7], [0, 5, 6, 7], [0, 5, 6, 0], [0, 0, 0, 0]]),
           "loss_mask": jnp.asarray([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0]],
                                    bool)}
  preds = jnp.asarray([[9, 5, 6, 7], [0, 5, 1, 7], [0, 5, 6, 3], [0, 0, 0, 0]])
  exact, frac, has = decoding.scores(preds, batch)
  np.testing.assert_array_equal(exact, [True, False, True, False])  # masked slots are ignored
  np.testing.assert_allclose(frac, [1.0, 2 / 3, 1.0, 0.0])
  np.testing.assert_array_equal(has, [True, True, True, False])


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_greedy_exact_match_in_a_run(tmp_path, num_seeds):
  results = helpers.run_smoke(tmp_path, "rope", **{"model.causal": True, "task.name": "copy",
                                                   "eval.greedy": True, "num_seeds": num_seeds,
                                                   "plots": True})
  if num_seeds > 1:
    import json
    per_seed = json.loads((tmp_path / "rope-run" / "seeds" / "seed1" / "results.json").read_text())
    assert set(per_seed["greedy"]["per_length_exact_match"]) == set(per_seed["per_length"])
  g = results["greedy"]
  assert set(g["per_length_exact_match"]) == set(results["per_length"])
  for l, exact in g["per_length_exact_match"].items():
    # A sequence decoded exactly has every token right, teacher-forced too.
    assert 0.0 <= exact <= g["per_length_token_accuracy"][l] + 1e-6
  assert (tmp_path / "rope-run" / "plots" / "accuracy.png").exists()


def test_greedy_refused_for_language_modelling(tmp_path):
  import importlib
  from posenc.errors import ConfigError
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("def f(x):\n  return x + 1\n" * 400)
  c = importlib.import_module("configs.lm.sinusoidal").get_config("smoke")
  c.task.corpus, c.eval.greedy = str(corpus), True
  with pytest.raises(ConfigError) as e:
    train.setup(c)
  assert e.value.field == "config.eval.greedy"


@pytest.mark.parametrize("causal", [False, True])
def test_fused_and_explicit_attention_agree(causal):
  """CPUs use explicit einsums, accelerators jax.nn.dot_product_attention: the same numbers."""
  import dataclasses
  c = helpers.config("sinusoidal", **{"model.causal": causal})
  s = train.setup(c)
  lengths, padded = s.eval_buckets[-1]
  params = _perturbed(train.init_state(s, jax.random.PRNGKey(0))["params"])
  batch = data_lib.make_batch_fn(s.task, positions_lib.make(c.positions, train=False),
                                 batch_size=4, lengths=lengths, padded_length=padded,
                                 causal=causal)(jax.random.PRNGKey(1), len(lengths) - 1)
  outs = {}
  for impl in ("fused", "explicit"):
    model = train.Transformer(dataclasses.replace(s.model_cfg, attention=impl),
                              s.model(s.eval_bound(padded)).encoding)
    outs[impl] = model.apply({"params": params}, batch["tokens"], batch["positions"],
                             batch["valid"])
  valid = np.asarray(batch["valid"])
  np.testing.assert_allclose(np.asarray(outs["fused"])[valid], np.asarray(outs["explicit"])[valid],
                             atol=2e-5, rtol=1e-5)
