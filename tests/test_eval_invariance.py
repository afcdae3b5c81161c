"""No score depends on how evaluation is batched or padded.

Evaluation pads every length of a bucket to the bucket's longest sequence (rounded up to a
multiple of 8), compiles the model with that bucket's position bound (``Dims.max_position``),
and runs each batch in micro-batches (``eval.num_buckets``, ``eval.micro_batch``). So the logits
of a sequence must not depend on how much padding follows it (PAD tokens, the positions of the
padding slots, the program's bound) nor on which rows share its forward pass.

``test_rows_do_not_see_padding_or_each_other``: for every scheme in every valid mode, and for
options that change evaluation (each RoPE scaling, recurrent's GRU form, randomized positions,
a clamped learned table), a model with perturbed parameters (several schemes start at exactly
zero, which would hide a leak) runs rows of in-range and out-of-range lengths

* (A) all in one pass, padded to the longest row's exact length (that row has no padding at
  all), in a program whose bound is that length, and
* (B) one row per pass (a one-row forward pass, vmapped over the rows), padded to 40 slots,
  in a program bound to 40,

and the logits of every real token must agree to float tolerance; where the decoding path
differs from the teacher-forced one, a decoder's greedy answers (``posenc.decoding``) too.
Logits, not scores: a tiny model's scores on a few samples are too coarse to show a leak.

``test_scores_do_not_depend_on_buckets_or_passes``: end to end through ``train.evaluate``
after a few training steps, the per-length scores (teacher-forced, made continuous, and
greedy) with 1, 2 and 8 buckets and passes of 1, 2 and 4 rows are the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
from posenc import decoding, encodings, positions as positions_lib, train
from posenc.encodings import rope
from tests import helpers

# Smoke preset: trained on lengths 1..6 (12 tokens: reverse_string's input plus its answer).
LENGTHS = (1, 4, 7, 9)  # two in range, two beyond it (14 and 18 tokens)
ROWS = 2                # rows per length
WIDE = 40               # (B)'s padded length: eval.max_length 20 -> 40 tokens


def _cases():
  """``(scheme, mode, overrides, greedy)``: every scheme in every valid mode, and options that
  change evaluation. ``greedy``: also decode greedily (dynamic NTK, whose length a decoding
  step must read as the full pass does, and conv, which decodes by recomputing; the cache of
  every decoder scheme is checked against the full pass in tests/test_decoding.py)."""
  cases = [(name, mode, {}, name == "conv" and mode == "decoder")
           for name in encodings.names() for mode in encodings.get(name).MODES]
  # Every context-extension rule (its math does not depend on the mode).
  cases += [("rope", "encoder", {"encoding.scaling": s, **ROPE_OPTIONS.get(s, {})}, False)
            for s in rope.SCALINGS if s != "none"]
  cases += [("recurrent", mode, {"encoding.form": "rnn"}, False) for mode in ("encoder", "decoder")]
  cases += [
      ("rope", "decoder", {"encoding.scaling": "dynamic_ntk"}, True),
      ("conv", "encoder", {"encoding.kernel_size": 4}, False),  # even: SamePad's asymmetry
      # Per-example positions ([B, P]; padding slots at position 0) and random offsets.
      ("rope", "decoder", {"encoding.scaling": "dynamic_ntk", "positions.kind": "randomized",
                           "positions.max_position": 64}, True),
      ("rope", "encoder", {"encoding.scaling": "linear", "encoding.factor": 2.0,
                           "positions.random_offset": True, "positions.max_position": 64}, False),
      ("learned", "encoder", {"encoding.fallback": "clamp", "encoding.max_len": 10}, False),
  ]
  return cases


def _case_id(case):
  name, mode, overrides, _ = case
  extra = ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()
                   if not isinstance(v, tuple))
  return f"{name}-{mode}" + (f"-{extra}" if extra else "")


# Options a rule needs (smoke head width 8: four rotary pairs; HF's static rules, a factor).
_LONGROPE = {"encoding.long_factor": (1.0, 1.5, 3.0, 4.0),
             "encoding.short_factor": (1.0, 1.0, 1.1, 1.2)}
ROPE_OPTIONS = {**{rule: {"encoding.factor": 2.0} for rule in ("linear", "ntk", "yarn", "llama3")},
                "longrope": {**_LONGROPE, "encoding.factor": 2.0},
                "longrope_per_sequence": _LONGROPE}
CASES = _cases()


def _setup(name, mode, overrides):
  """The run's Setup and evaluation variables: initial parameters, each moved by Gaussian
  noise (several schemes start at exactly zero, which would hide a leak), and the scheme's
  evaluation cache, computed once for the longest length as evaluation does."""
  c = helpers.config(name, **{"model.causal": mode == "decoder", "eval.min_length": 1,
                              "eval.max_length": 20, **overrides})
  s = train.setup(c)
  assert s.eval_buckets[-1][1] == WIDE
  model, n = s.model(s.train_bound()), s.train_padded
  args = (jnp.zeros((1, n), jnp.int32), jnp.zeros((1, n), jnp.int32), jnp.ones((1, n), bool))
  params = model.init(jax.random.PRNGKey(0), *args)["params"]
  rng = np.random.default_rng(7)  # a test input: no sampler compiled per parameter shape
  params = jax.tree_util.tree_map(
      lambda p: jnp.asarray(np.asarray(p) + 0.2 * rng.standard_normal(p.shape).astype(p.dtype)),
      params)
  return s, {"params": params, **train.eval_cache(s, params)}


_BATCHES: dict = {}


def _rows(s):
  """``ROWS`` rows of each of ``LENGTHS``, padded to ``WIDE``; ``length`` per row (made once
  per mode and position sampler: every scheme reads the same rows)."""
  key = (s.causal, str(sorted(s.config.positions.to_dict().items())))
  if key not in _BATCHES:
    _BATCHES[key] = _make_rows(s)
  return _BATCHES[key]


def _make_rows(s):
  batch_fn = data_lib.make_batch_fn(
      s.task, positions_lib.make(s.config.positions, train=False), batch_size=ROWS,
      lengths=LENGTHS, padded_length=WIDE, causal=s.causal)
  parts = [batch_fn(jax.random.PRNGKey(10 + i), i) for i in range(len(LENGTHS))]
  out = {k: jnp.concatenate([p[k] for p in parts]) for k in parts[0] if k not in ("length", "positions")}
  pos = [p["positions"] for p in parts]
  out["positions"] = pos[0] if pos[0].shape[0] == 1 else jnp.concatenate(pos)
  out["length"] = jnp.repeat(jnp.asarray(LENGTHS, jnp.int32), ROWS)
  return out


def _run(s, variables, batch, greedy_too):
  """Logits (and greedy answers) of (A) one tight pass and (B) one wide pass per row."""
  narrow = data_lib.total_length(s.task, max(LENGTHS))
  contiguous = positions_lib.shared_contiguous(s.config.positions, train=False)
  model_a = s.model(s.eval_bound(narrow), contiguous=contiguous)
  model_b = s.model(s.eval_bound(WIDE), contiguous=contiguous)
  output_offset = data_lib.NUM_SPECIAL + s.task.input_vocab_size
  shared = batch["positions"].shape[0] == 1

  def greedy(model, variables, rows):
    return decoding.greedy(model, variables, rows, output_offset=output_offset,
                           answer_length=s.task.output_length(rows["length"]))

  @jax.jit
  def run(variables, batch):
    a = {k: (v[:, :narrow] if v.ndim == 2 else v) for k, v in batch.items()}
    out = {"a": model_a.apply(variables, a["tokens"], a["positions"], a["valid"])}
    per_row = {k: v[:, None] for k, v in batch.items() if not (k == "positions" and shared)}

    def one(r):  # one row as a batch of one; shared positions stay [1, P]
      return {**r, "length": r["length"][0], **({"positions": batch["positions"]} if shared else {})}

    # One row per pass: vmap over rows of a one-row forward pass is, by its semantics, each
    # row on its own (a batch-wide reduction would see one row), in one batched program.
    out["b"] = jax.vmap(lambda r: model_b.apply(
        variables, *(one(r)[k] for k in ("tokens", "positions", "valid")))[0])(per_row)
    if greedy_too:
      groups = {k: v.reshape(len(LENGTHS), ROWS, *v.shape[1:]) for k, v in a.items()
                if not (k == "positions" and shared)}

      def group(g):  # one length's rows, as evaluation batches them
        return greedy(model_a, variables,
                      {**g, "length": g["length"][0], **({"positions": a["positions"]} if shared else {})})

      out["greedy_a"] = jax.lax.map(group, groups).reshape(len(LENGTHS) * ROWS, narrow)
      out["greedy_b"] = jax.lax.map(lambda r: greedy(model_b, variables, one(r))[0], per_row)
    return out

  return jax.device_get(run(variables, batch)), narrow


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_rows_do_not_see_padding_or_each_other(case):
  s, variables = _setup(*case[:3])
  batch = _rows(s)
  out, narrow = _run(s, variables, batch, greedy_too=case[3])
  valid = np.asarray(batch["valid"][:, :narrow])
  a, b = out["a"], out["b"][:, :narrow]
  assert np.all(np.isfinite(a[valid])) and np.abs(a[valid]).max() > 1e-2
  np.testing.assert_allclose(b[valid], a[valid], atol=1e-4, rtol=1e-4,
                             err_msg=f"{_case_id(case)}: logits depend on padding or the pass")
  if case[3]:
    np.testing.assert_array_equal(out["greedy_b"][:, :narrow], out["greedy_a"],
                                  err_msg=f"{_case_id(case)}: greedy answers depend on padding")


def _log_likelihoods(logits, batch):
  """Per sequence: the mean log-probability of its scored answer tokens, and whether it has
  any: a score that moves with every logit (accuracy, the argmax of the same logits, would
  hide most changes in a barely trained model)."""
  mask = batch["loss_mask"]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  ll = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
  count = jnp.sum(mask, axis=1)
  return jnp.sum(jnp.where(mask, ll, 0.0), axis=1) / jnp.maximum(count, 1), count > 0


def test_scores_do_not_depend_on_buckets_or_passes(monkeypatch):
  """Through ``train.evaluate`` after three training steps of a RoPE decoder with dynamic NTK,
  lengths 7..9 (beyond training): 1 bucket (padded to 24), 2 ([7, 8] to 16, [9] to 24) or
  one per length (16, 16, 24), with passes of 4, 1 and 2 rows, give the same per-length scores,
  teacher-forced and greedy. The teacher-forced score is made continuous (the mean target
  log-likelihood, summed by evaluation exactly as accuracy is) so that a leak shows."""
  c = helpers.config("rope", **{"model.causal": True, "encoding.scaling": "dynamic_ntk",
                                "eval.greedy": True, "eval.min_length": 7, "eval.max_length": 9,
                                "train.steps": 3, "eval.samples_per_length": 4,
                                "eval.batch_size": 4})
  s = train.setup(c)
  keys = train.root_keys(c.seed)
  state = train.init_state(s, keys["init"])
  step = jax.jit(train.make_train_step(s))
  for _ in range(c.train.steps):
    state, _ = step(state, keys["train"])
  monkeypatch.setattr(data_lib, "sequence_scores", _log_likelihoods)
  results = {}
  for num_buckets, micro in ((1, 4), (2, 1), (8, 2)):
    c.eval.num_buckets, c.eval.micro_batch = num_buckets, micro
    s = train.setup(c)
    if num_buckets == 8:  # one program per length: setup merges 7 and 8 (both padded to 16)
      s.eval_buckets = data_lib.buckets(s.task, range(7, 10), num_buckets)
    assert len(s.eval_buckets) == min(num_buckets, 3)
    results[num_buckets] = train.evaluate(s, state["params"], keys["eval"], log=None, greedy=True)
  for m, metric in enumerate(("log-likelihood", "exact match", "greedy token accuracy")):
    reference = results[1][m]
    for num_buckets in (2, 8):
      got = results[num_buckets][m]
      assert list(got) == list(reference)
      np.testing.assert_allclose([got[k] for k in reference], list(reference.values()), rtol=1e-5,
                                 atol=1e-6, err_msg=f"{metric}, {num_buckets} buckets")
  assert all(v < 0 for v in results[1][0].values())  # log-likelihoods, not accuracies
