"""The paths an accelerator takes by default, forced on the CPU and checked against the CPU's.

On a GPU or TPU, ``model.attention="auto"`` is ``jax.nn.dot_product_attention`` (the fused
kernel) for schemes without a ``logits``/``values``/``attend`` hook, ``seed_loop="auto"`` vmaps
seeds, ``eval.micro_batch=0`` scores the whole evaluation batch in one pass, and runs are
often made with ``model.dtype="bfloat16"``. None of these is the CPU default, so each is
forced here:

* fused attention equals the explicit einsums (float32: to float noise; bfloat16: to bf16
  rounding), for every such scheme in every mode it is valid in;
* bfloat16 (parameters, gradients and optimizer state float32; activations and matmuls
  bfloat16) gives finite logits and gradients close to float32 for every scheme in every
  valid mode, at positions up to ~720 (past bfloat16's exact integers, 256), where position
  math done in bfloat16 would show;
* seeds vmapped in one program equal separate single-seed runs, step for step;
* the whole evaluation batch in one pass gives the scores of passes of one row.

Each scheme × mode compiles one program (f32, bf16, fused, gradients together) that the
tests of that case share; shapes are tiny (smoke preset, 4 rows of 24 tokens).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import encodings, train
from tests import helpers

CASES = [(name, mode) for name in encodings.names() for mode in encodings.get(name).MODES]
# The fused kernel is taken only where the model builds no logits itself.
FUSED = [(n, m) for n, m in CASES
         if not {"logits", "values", "attend"} & set(encodings.get(n).hooks())]

# Measured on the smoke preset at positions up to ~720 (README "Mixed precision"): the largest
# max|logit error| / max|logit| over all cases was 0.032 (FLOATER's encoder, whose q/k/v biases
# grow along the trajectory), the rest 0.003-0.006; gradients' relative L2 difference at most
# 0.024. Bounds leave about 2x room, and stay far below what a position computed in bfloat16
# gives (positions past 256 rounded to multiples of 2, 4: errors of order 1).
BF16_LOGITS_RTOL = 0.08
BF16_GRAD_RTOL = 0.06
B, L, MAX_POSITION = 4, 24, 1024


def _id(case):
  return f"{case[0]}-{case[1]}"


def _inputs(s: train.Setup, max_position: int):
  """Tokens, per-row increasing positions below ``max_position`` (not one shared run: the
  gather paths), and rows padded at their ends by 0, 3, 7 and 0 tokens."""
  vocab = s.model_cfg.vocab_size
  tokens = jax.random.randint(jax.random.PRNGKey(2), (B, L), 3, vocab)
  gap = 2 if max_position > 2 * L else 1  # gaps of 1 or 2 where the table has the room
  starts = jax.random.randint(jax.random.PRNGKey(1), (B, 1), 0, max(max_position - gap * L, 1))
  steps = jax.random.randint(jax.random.PRNGKey(3), (B, L), 1, gap + 1)
  positions = (starts + jnp.cumsum(steps, axis=1) - 1).astype(jnp.int32)
  valid = jnp.arange(L)[None, :] < jnp.array([L, L - 3, L - 7, L])[:, None]
  return tokens, positions, valid


def _models(scheme: str, mode: str):
  """The case's float32 model (explicit attention), a ``variant(dtype, attention)`` of it, its
  inputs and its parameters (initialised by the float32 model)."""
  c = helpers.config(scheme, **{"model.causal": mode == "decoder"})
  s = train.setup(c)
  bound = MAX_POSITION
  try:
    s.model(bound).encoding.check(bound)
  except Exception:  # noqa: BLE001 — a table sized to the run's positions (learned, tupe, ...)
    bound = max(s.eval_bound(p) for _, p in s.eval_buckets)
  tokens, positions, valid = _inputs(s, bound)
  base = s.model(bound)
  base = base.clone(cfg=dataclasses.replace(base.cfg, attention="explicit"))

  def variant(dtype, attention="explicit"):
    return base.clone(cfg=dataclasses.replace(base.cfg, dtype=dtype, attention=attention))

  params = base.init(jax.random.PRNGKey(0), tokens, positions, valid, train=False)["params"]
  return variant, (tokens, positions, valid), params


@functools.lru_cache(maxsize=None)
def _case(scheme: str, mode: str) -> dict:
  """Float32 and bfloat16 logits of the real tokens, with the explicit attention and (where the
  scheme allows it) the fused one. Run eagerly (op by op): every scheme reuses the primitives
  the earlier ones compiled, which costs far less than compiling a program per case."""
  variant, (tokens, positions, valid), params = _models(scheme, mode)
  names = {"f32": ("float32", "explicit"), "bf16": ("bfloat16", "explicit")}
  if (scheme, mode) in FUSED:
    names.update(f32_fused=("float32", "fused"), bf16_fused=("bfloat16", "fused"))
  mask = np.asarray(valid)
  return {name: np.asarray(variant(*how).apply({"params": params}, tokens, positions, valid))[mask]
          for name, how in names.items()}


def _grad_rel(a: list, b: list) -> float:
  num = sum(float(np.sum(np.square(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
            for x, y in zip(a, b))
  den = sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in a)
  return float(np.sqrt(num / max(den, 1e-30)))


def test_cases_cover_every_scheme_and_the_fused_ones():
  assert {n for n, _ in CASES} == set(encodings.names())
  fused = {n for n, _ in FUSED}
  assert {"sinusoidal", "rope", "floater", "learned"} <= fused
  assert not {"alibi", "t5", "shaw", "complex", "fox", "stickbreaking"} & fused


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_bfloat16_is_finite_and_close_to_float32(case):
  got = _case(*case)
  f32, bf16 = got["f32"], got["bf16"]
  assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16)), case  # the head is float32
  scale = np.max(np.abs(f32))
  assert scale > 1e-2  # logits that can tell an error apart
  rel = np.max(np.abs(bf16 - f32)) / scale
  assert 0 < rel <= BF16_LOGITS_RTOL, (case, rel)  # 0 would mean bf16 never ran


@pytest.mark.parametrize("case", FUSED, ids=_id)
def test_fused_attention_equals_explicit(case):
  got = _case(*case)
  np.testing.assert_allclose(got["f32_fused"], got["f32"], rtol=1e-4, atol=1e-5,
                             err_msg=f"{case}: fused attention differs (float32)")
  assert np.all(np.isfinite(got["bf16_fused"]))
  scale = np.max(np.abs(got["f32"]))
  assert np.max(np.abs(got["bf16_fused"] - got["f32"])) / scale <= BF16_LOGITS_RTOL, case


# One scheme per way of entering the model: embed (sinusoidal), project (rope), logits
# (alibi), values (shaw), projection + attend (complex, fox); FLOATER's bfloat16 training
# step (solve and backpropagation through it) runs in the end-to-end test below.
@pytest.mark.parametrize("case", [("sinusoidal", "encoder"), ("rope", "decoder"), ("alibi", "encoder"),
                                  ("shaw", "encoder"), ("complex", "encoder"), ("fox", "decoder")],
                         ids=_id)
def test_bfloat16_gradients_are_float32_and_close(case):
  variant, (tokens, positions, valid), params = _models(*case)

  def grads(dtype):
    def objective(p):
      logits = variant(dtype).apply({"params": p}, tokens, positions, valid)
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      return jnp.sum(jnp.where(valid[..., None], logp, 0.0)) / jnp.sum(valid)
    return jax.tree_util.tree_leaves(jax.grad(objective)(params))

  f32, bf16 = grads("float32"), grads("bfloat16")
  for g in bf16:  # parameters, hence gradients and Adam's moments, stay float32
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))), case
  rel = _grad_rel(f32, bf16)
  assert 0 < rel <= BF16_GRAD_RTOL, (case, rel)


def test_bfloat16_computes_in_bfloat16_and_keeps_the_contract():
  """The matmuls of a bfloat16 model are bfloat16; the attention softmax (explicit and
  fused), LayerNorm's statistics, the position table and the output logits are float32."""
  s = train.setup(helpers.config("sinusoidal"))
  tokens, positions, valid = _inputs(s, 64)
  base = s.model(64)
  params = jax.jit(lambda k: base.init(k, tokens, positions, valid)["params"])(jax.random.PRNGKey(0))
  for attention in ("explicit", "fused"):
    m = base.clone(cfg=dataclasses.replace(base.cfg, dtype="bfloat16", attention=attention))
    jaxpr = jax.make_jaxpr(lambda p: m.apply({"params": p}, tokens, positions, valid))(params)
    eqns = [e for e in _all_eqns(jaxpr.jaxpr)]
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    assert any(all(v.aval.dtype == jnp.bfloat16 for v in e.invars) for e in dots), attention
    exps = [e for e in eqns if e.primitive.name == "exp"]
    assert exps and all(e.outvars[0].aval.dtype == jnp.float32 for e in exps), attention
    sins = [e for e in eqns if e.primitive.name in ("sin", "cos")]
    assert sins and all(e.outvars[0].aval.dtype == jnp.float32 for e in sins)
    assert jaxpr.out_avals[0].dtype == jnp.float32


def _all_eqns(jaxpr):
  for e in jaxpr.eqns:
    yield e
    for p in e.params.values():
      inner = getattr(p, "jaxpr", p)
      if hasattr(inner, "eqns"):
        yield from _all_eqns(inner)


@pytest.mark.parametrize("scheme,causal", [("rope", True)])
def test_vmapped_seeds_equal_separate_runs(scheme, causal):
  """Two training steps of two seeds vmapped in one program (the accelerator default) against
  each seed's own single-seed steps (tests/test_scale.py: whole sinusoidal runs, and FLOATER's
  seeds split over devices, each device's share vmapped)."""
  over = {"model.causal": causal, "seed": 5}
  s2 = train.setup(helpers.config(scheme, num_seeds=2, seed_loop="vmap", **over))
  keys = train.root_keys(5, 2)
  state = train.seeded(lambda k: train.init_state(s2, k), 2, "vmap")(keys["init"])
  step = jax.jit(train.seeded(train.make_train_step(s2), 2, "vmap"))
  for _ in range(2):
    state, metrics = step(state, keys["train"])
  s1 = train.setup(helpers.config(scheme, **over))
  one_step = jax.jit(train.make_train_step(s1))
  for k in range(2):
    ks = train.root_keys(5 + k)
    one = train.init_state(s1, ks["init"])
    for _ in range(2):
      one, one_metrics = one_step(one, ks["train"])
    np.testing.assert_allclose(metrics["loss"][k], one_metrics["loss"], rtol=1e-5)

    def check(path, x, y):
      name = jax.tree_util.keystr(path)
      # The key projection's bias has a zero gradient whose rounding noise Adam scales to
      # steps of ~lr (see tests/test_scale.py): compare it loosely.
      atol = 5e-3 if "key" in name and "bias" in name else 2e-6
      np.testing.assert_allclose(x[k], y, rtol=1e-5, atol=atol, err_msg=f"{scheme} seed {k} {name}")
    jax.tree_util.tree_map_with_path(check, state["params"], one["params"])


# RoPE's per-sequence scaling: tests/test_eval_invariance.py; FLOATER's evaluation cache:
# tests/test_eval_passes.py.
@pytest.mark.parametrize("scheme,overrides", [
    ("conv", {"model.causal": True}),        # padding zeroed before the convolution
    ("complex", {}),                         # the scheme's own attention
])
def test_whole_batch_evaluation_equals_passes(scheme, overrides):
  """``eval.micro_batch`` = the batch (an accelerator's automatic choice) against passes of
  one row, at initialisation (per-sequence scores between 0 and 1: a wrong sum shows)."""
  def scores(micro):
    c = helpers.config(scheme, **{"eval.samples_per_length": 4, "eval.batch_size": 4,
                                  "eval.micro_batch": micro, "eval.max_length": 9, **overrides})
    s = train.setup(c)
    keys = train.root_keys(c.seed)
    state = train.init_state(s, keys["init"])
    assert all(train.eval_micro_batch(c, 4, p) == micro for _, p in s.eval_buckets)
    return train.evaluate(s, state["params"], keys["eval"], log=None)

  whole, passes = scores(4), scores(1)
  assert whole.keys() == passes.keys()
  np.testing.assert_allclose([passes[k] for k in whole], [whole[k] for k in whole], atol=1e-6)
  assert any(0.0 < v < 1.0 for v in whole.values()), whole


def test_accelerator_configuration_runs_end_to_end(tmp_path):
  """A whole run as an accelerator makes it: bfloat16, two seeds vmapped, whole-batch
  evaluation (ALiBi: its bias joins the float32 logits of bfloat16 queries and keys)."""
  results = helpers.run_smoke(tmp_path, "alibi", num_seeds=2, seed_loop="vmap",
                              **{"model.dtype": "bfloat16", "eval.micro_batch": 4})
  helpers.check_smoke_results(results)
  assert results["num_seeds"] == 2 and len(results["in_range_score_per_seed"]) == 2
  assert all(0.0 <= v <= 1.0 for v in results["in_range_score_per_seed"])
