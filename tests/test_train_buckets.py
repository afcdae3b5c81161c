"""Training length buckets (config.train.num_buckets) and the fused dropout masks.

A bucketed run draws the same lengths, examples and positions as the one program of
num_buckets = 1, pads each batch only to its bucket, and resumes bit for bit; the fused
dropout draws flax's masks exactly.
"""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
from posenc import dropout, positions as positions_lib, tasks, train
from posenc.errors import ConfigError
from tests import helpers


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("shape", [(3,), (5, 7), (2, 3, 33), (4, 80, 64)])
def test_threefry_bits_are_jax_random_bits(shape):
  for seed in (0, 7, 2 ** 31 + 5):
    key = jax.random.PRNGKey(seed)
    got = jax.jit(lambda k: dropout.threefry_bits(k, shape))(key)
    np.testing.assert_array_equal(got, jax.random.bits(key, shape, jnp.uint32))


def test_keep_mask_is_jax_bernoulli():
  key = jax.random.PRNGKey(3)
  for p in (0.9, 0.5, 0.123, 1e-7, 1 - 1e-7, 0.75):
    got = jax.jit(lambda k: dropout.keep_mask(k, p, (64, 300)))(key)
    np.testing.assert_array_equal(got, jax.random.bernoulli(key, p, (64, 300)), err_msg=str(p))
  typed = jax.random.key(11)
  np.testing.assert_array_equal(dropout.keep_mask(typed, 0.9, (33, 9)),
                                jax.random.bernoulli(typed, 0.9, (33, 9)))
  rbg = jax.random.key(11, impl="rbg")  # another generator: flax's own path
  np.testing.assert_array_equal(dropout.keep_mask(rbg, 0.9, (33, 9)),
                                jax.random.bernoulli(rbg, 0.9, (33, 9)))


class _Net(nn.Module):
  drop: type

  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = self.drop(0.3)(nn.Dense(16)(x), deterministic=False)
    return x


def test_dropout_mask_length_cuts_the_longer_mask():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 4))
  key = jax.random.PRNGKey(9)
  full = dropout.Dropout(0.4, mask_length=16).apply({}, jnp.pad(x, ((0, 0), (0, 6), (0, 0))),
                                                   deterministic=False, rng=key)
  cut = dropout.Dropout(0.4, mask_length=16).apply({}, x, deterministic=False, rng=key)
  np.testing.assert_array_equal(full[:, :10], cut)
  flax_ = nn.Dropout(0.4).apply({}, jnp.pad(x, ((0, 0), (0, 6), (0, 0))), deterministic=False,
                                rng=key)
  np.testing.assert_array_equal(flax_, full)


def test_dropout_module_is_flax_dropout_bit_for_bit():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 16))
  params = _Net(nn.Dropout).init({"params": jax.random.PRNGKey(1)}, x)
  for key in (jax.random.PRNGKey(2), jax.random.key(3)):
    out = {}
    for cls in (dropout.Dropout, nn.Dropout):
      f = lambda p, cls=cls: _Net(cls).apply(p, x, rngs={"dropout": key})
      out[cls] = (jax.jit(f)(params), jax.jit(jax.grad(lambda p, f=f: f(p).sum()))(params))
    ours, flax_ = out[dropout.Dropout], out[nn.Dropout]
    assert float(jnp.mean(ours[0] == 0)) > 0.1  # masks do drop
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(flax_)):
      np.testing.assert_array_equal(a, b)


def test_training_step_with_dropout_is_unchanged_by_the_fused_masks(monkeypatch):
  c = helpers.config("sinusoidal", **{"model.dropout": 0.2})
  s = train.setup(c)
  keys = train.root_keys(c.seed)
  state = train.init_state(s, keys["init"])
  got = {}
  for fused in (True, False):
    monkeypatch.setattr(dropout, "FUSED", fused)
    new, m = jax.jit(train.make_train_step(s))(state, keys["train"])
    got[fused] = (m, new["params"])
  # The same masks, so the same step: bit for bit under XLA's default CPU flags; this suite's
  # compile-fast flags (conftest) may round the two programs' arithmetic differently, far below
  # what one dropped or kept unit would change. The key projection's bias has a zero gradient
  # (softmax ignores a constant per row) whose rounding noise Adam scales up: compared loosely.
  def check(path, a, b):
    name = jax.tree_util.keystr(path)
    atol = 1e-4 if "key" in name and "bias" in name else 1e-7
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=name)
  jax.tree_util.tree_map_with_path(check, got[True], got[False])


@pytest.mark.parametrize("pre_ln", [False, True])
def test_dropout_sits_where_the_papers_put_it(pre_ln):
  """Residual dropout as Vaswani et al. (sec. 5.4) and Ruoss et al.'s reference encoder: on the
  embeddings and on each sub-layer's output, all [B, L, d_model]; no mask inside the FFN."""
  c = helpers.config("sinusoidal", **{"model.dropout": 0.2, "model.num_layers": 2,
                                      "model.pre_ln": pre_ln})
  s = train.setup(c)
  model = s.model(s.train_bound())
  variables = train.init_state(s, jax.random.PRNGKey(0))
  length = s.train_padded
  args = (jnp.ones((2, length), jnp.int32), jnp.arange(length)[None], jnp.ones((2, length), bool))
  shapes = []

  def record(f, args_, kwargs, context):
    if isinstance(context.module, dropout.Dropout) and context.method_name == "__call__":
      shapes.append(args_[0].shape)
    return f(*args_, **kwargs)

  with nn.intercept_methods(record):
    model.apply({"params": variables["params"]}, *args, train=True,
                rngs={"dropout": jax.random.PRNGKey(1)})
  assert shapes == [(2, length, c.model.d_model)] * (1 + 2 * c.model.num_layers)


# ----------------------------------------------------------------------------- buckets


def _cost(task, plan):
  return sum(len(g) * p for g, p in plan)


@pytest.mark.parametrize("task_name,lo,hi", [("reverse_string", 1, 40), ("parity_check", 3, 17),
                                             ("stack_manipulation", 1, 9)])
def test_train_buckets_partition_and_are_the_cheapest_split(task_name, lo, hi):
  task = tasks.get(task_name)
  lengths = list(range(lo, hi + 1))
  longest = data_lib.total_length(task, hi)
  assert data_lib.train_buckets(task, lengths, 1, multiple=1) == [(tuple(lengths), longest)]
  for k in (1, 2, 3, 4, 6):
    plan = data_lib.train_buckets(task, lengths, k, multiple=1)
    assert 1 <= len(plan) <= k
    assert [l for g, _ in plan for l in g] == lengths  # every length once, in order
    pads = [p for _, p in plan]
    assert pads == sorted(set(pads)) and pads[-1] == longest
    for g, p in plan:
      assert p == max(data_lib.total_length(task, l) for l in g)
    if len(lengths) <= 12:  # brute force over every split into at most k runs
      best = min(
          sum((j - i) * max(data_lib.total_length(task, l) for l in lengths[i:j])
              for i, j in zip((0,) + cuts, cuts + (len(lengths),)))
          for m in range(k) for cuts in itertools.combinations(range(1, len(lengths)), m))
      assert _cost(task, plan) == best
  # Cheaper in expectation with more buckets; multiples round the padded lengths up.
  costs = [_cost(task, data_lib.train_buckets(task, lengths, k, multiple=1)) for k in (1, 2, 4, 8)]
  assert costs == sorted(costs, reverse=True) and costs[-1] < costs[0]
  assert all(p % 8 == 0 for _, p in data_lib.train_buckets(task, lengths, 4, multiple=8))


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_length_schedule_is_what_the_one_program_draws(num_seeds):
  c = helpers.config("sinusoidal", **{"num_seeds": num_seeds})
  s = train.setup(c)
  keys = train.root_keys(c.seed, num_seeds)
  n = len(s.train_lengths)
  start, stop = 5, 40
  sched = train.length_schedule(keys["train"], start, stop, n)
  assert sched.shape == ((stop - start,) if num_seeds == 1 else (stop - start, num_seeds))
  draw = lambda k: jax.vmap(lambda t: train.length_index(train.step_keys(k, t)[0], n))(
      jnp.arange(start, stop, dtype=jnp.int32))
  expect = draw(keys["train"]) if num_seeds == 1 else jax.vmap(draw, out_axes=1)(keys["train"])
  np.testing.assert_array_equal(sched, expect)
  # Chunks join seamlessly, and every length is drawn (uniformly: 35 x 6 lengths).
  assert (train.length_schedule(keys["train"], start, stop + 3, n)[:stop - start] == sched).all()
  assert set(np.unique(sched)) == set(range(n))


def test_the_one_program_draws_the_schedule():
  """metrics["length"] of the num_buckets = 1 step is the host's schedule, step by step."""
  c = helpers.config("sinusoidal")
  s = train.setup(c)
  keys = train.root_keys(c.seed)
  state = train.init_state(s, keys["init"])
  step = jax.jit(train.make_train_step(s))
  drawn = []
  for _ in range(8):
    state, m = step(state, keys["train"])
    drawn.append(int(m["length"]))
  sched = train.length_schedule(keys["train"], 0, 8, len(s.train_lengths))
  assert drawn == [s.train_lengths[i] for i in sched]


def test_a_bucket_draws_the_examples_and_positions_of_the_one_program():
  """The sampling distribution does not change: for every length and key, a bucket's batch
  is the one program's batch cut at the bucket's padded length (nothing real is cut)."""
  c = helpers.config("sinusoidal", **{"train.num_buckets": 3, "positions.kind": "randomized",
                                      "positions.max_position": 64})
  s = train.setup(c)
  plan = s.train_buckets()
  assert len(plan) == 3
  sampler = positions_lib.make(c.positions, train=True)
  make = lambda lengths, padded: data_lib.make_batch_fn(
      s.task, sampler, batch_size=c.train.batch_size, lengths=lengths, padded_length=padded,
      causal=False, sample_max=max(s.train_lengths))
  whole = make(s.train_lengths, s.train_padded)
  for (group, padded), key in itertools.product(plan, jax.random.split(jax.random.PRNGKey(4), 3)):
    part = make(group, padded)
    for i, length in enumerate(group):
      a = whole(key, s.train_lengths.index(length))
      b = part(key, i)
      assert padded < s.train_padded or group == plan[-1][0]
      for name in ("tokens", "targets", "loss_mask", "valid", "positions"):
        np.testing.assert_array_equal(a[name][:, :padded], b[name], err_msg=name)
        assert not np.asarray(a["valid"][:, padded:]).any()  # only padding was cut
      assert int(a["length"]) == int(b["length"]) == length


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_bucket_steps_compute_the_one_program_steps(rate):
  """Same loss, gradients and update as the padded program, dropout masks included. The key
  projection's bias is left out: its gradient is zero up to rounding (softmax ignores a
  per-query constant), and Adam normalises that rounding noise, which depends on the
  padding."""
  c = helpers.config("sinusoidal", **{"train.num_buckets": 3, "model.dropout": rate})
  s = train.setup(c)
  keys = train.root_keys(c.seed)
  state = train.init_state(s, keys["init"])
  one = jax.jit(train.make_train_step(s))
  plan = s.train_buckets()
  progs = [jax.jit(train.make_train_step(s, b)) for b in range(len(plan))]
  sched = train.length_schedule(keys["train"], 0, 6, len(s.train_lengths))
  for i in sched:
    b = next(b for b, (g, _) in enumerate(plan) if s.train_lengths[i] in g)
    new_a, ma = one(state, keys["train"])
    new_b, mb = progs[b](state, keys["train"], i)
    for k in ("loss", "grad_norm", "accuracy", "token_accuracy", "length"):
      np.testing.assert_allclose(float(ma[k]), float(mb[k]), rtol=1e-5, err_msg=k)
    for (path, a), (_, x) in zip(jax.tree_util.tree_leaves_with_path(new_a),
                                 jax.tree_util.tree_leaves_with_path(new_b)):
      name = jax.tree_util.keystr(path)
      if "_key" not in name or "bias" not in name:
        np.testing.assert_allclose(a, x, rtol=2e-5, atol=1e-6, err_msg=name)
    state = new_a


def _leaves(workdir):
  params, _ = train.load_params(str(workdir))
  return jax.tree_util.tree_leaves(params)


@pytest.mark.parametrize("extra", [{}, {"num_seeds": 2, "train.length_seed": 0}],
                         ids=["one-seed", "seeds-sharing-lengths"])
def test_bucketed_run_resumes_bit_identically(tmp_path, extra):
  logs = []
  whole = helpers.config("sinusoidal", **{"train.steps": 6, "train.num_buckets": 2, **extra})
  whole.workdir = str(tmp_path / "whole")
  train.train_and_evaluate(whole, log=logs.append)
  assert any("compiled" in l and "training programs (one per bucket" in l for l in logs), logs
  part = helpers.config("sinusoidal", **{"train.steps": 4, "train.num_buckets": 2, **extra})
  part.workdir = str(tmp_path / "resumed")
  train.train_and_evaluate(part, log=lambda *_: None)
  rest = helpers.config("sinusoidal", **{"train.steps": 6, "train.num_buckets": 2, **extra})
  rest.workdir = part.workdir
  logs = []
  train.train_and_evaluate(rest, log=logs.append)
  assert "resumed from checkpoint at step 4" in logs
  for a, b in zip(_leaves(whole.workdir), _leaves(rest.workdir), strict=True):
    np.testing.assert_array_equal(a, b)


def test_num_buckets_is_checked_and_a_resumable_field():
  for bad in (-1, -2):  # ml_collections refuses values of another type by itself
    with pytest.raises(ConfigError, match=r"config\.train\.num_buckets"):
      train.setup(helpers.config("sinusoidal", **{"train.num_buckets": bad}))
  a = helpers.config("sinusoidal", **{"train.num_buckets": 1})
  b = helpers.config("sinusoidal", **{"train.num_buckets": 5})
  # a workdir may resume with another bucketing (it then trains to other bits: the hash differs)
  assert "train.num_buckets" not in train._config_diff(a.to_dict(), b.to_dict())


def test_num_buckets_is_in_the_config_hash():
  """Padding to another bucket changes a run's rounding, so the same seed trains to other bits:
  a run made with another train.num_buckets is another run (another workdir name; a sweep does
  not count it as done)."""
  from posenc.setup import config_hash
  a = helpers.config("sinusoidal", **{"train.num_buckets": 1})
  b = helpers.config("sinusoidal", **{"train.num_buckets": 4})
  assert config_hash(a) != config_hash(b)
  c = helpers.config("sinusoidal", **{"eval.micro_batch": 2, "train.num_buckets": 1})
  c.plots = True
  assert config_hash(c) == config_hash(a)  # how evaluation is split and plots: not results


# ----------------------------------------------------------------------------- shared lengths


def _run_programs(c, steps):
  """``steps`` training steps of ``c`` through the run's own programs (train.step_programs)."""
  s = train.setup(c)
  keys = train.root_keys(c.seed, c.num_seeds)
  state = train.initial_state(s, keys["init"])
  progs = train.step_programs(s, keys["train"], 0)
  lengths = []
  for t in range(steps):
    state, m = progs.run(state, keys["train"], t)
    lengths.append(np.asarray(m["length"]))
  return s, progs, jax.device_get(state["params"]), np.stack(lengths)


def test_seeds_that_share_their_lengths_equal_their_single_runs():
  """train.length_seed: every seed draws seed s's step lengths, so seeds in one program pad as
  one run does (each bucket's program, not the group's longest); seed k is then the single run
  with seed k and the same length_seed: the same lengths, and the same parameters up to the
  float noise that tests/test_scale.py allows any seeded program (bit for bit outside this
  suite's XLA flags, measured)."""
  from tests.test_scale import _assert_same_params
  shared = {"train.num_buckets": 3, "train.length_seed": 0, "train.steps": 6}
  s, progs, both, lengths = _run_programs(helpers.config(
      "sinusoidal", num_seeds=2, seed=3, seed_loop="map", **shared), 6)
  assert len(progs.buckets) > 1
  assert (lengths[:, 0] == lengths[:, 1]).all()  # one draw for both seeds
  # the draw is seed 0's own (a single run with seed 0 and per-seed lengths draws it too)
  own = train.length_schedule(train.root_keys(0)["train"], 0, 6, len(s.train_lengths))
  np.testing.assert_array_equal(lengths[:, 0], np.asarray(s.train_lengths)[own])
  for k, seed in enumerate((3, 4)):
    _, _, one, one_lengths = _run_programs(helpers.config("sinusoidal", seed=seed, **shared), 6)
    np.testing.assert_array_equal(one_lengths, lengths[:, k])
    _assert_same_params(jax.tree_util.tree_map(lambda x: x[k], both), one)


def test_length_seed_is_checked_and_hashed_only_when_set():
  from posenc.setup import config_hash
  with pytest.raises(ConfigError, match=r"config\.train\.length_seed"):
    train.setup(helpers.config("sinusoidal", **{"train.length_seed": -2}))
  a = helpers.config("sinusoidal")
  b = helpers.config("sinusoidal")
  del b.train["length_seed"]  # a config from before the field existed
  assert config_hash(a) == config_hash(b)  # runs made before it keep their names
  assert config_hash(helpers.config("sinusoidal", **{"train.length_seed": 0})) != config_hash(a)


def test_automatic_buckets_finish_the_run_soonest_by_the_cost_model():
  """train.num_buckets = 0: a short run gets one program (padded to its longest sequence, not
  the one program's rounded length), a long one a program per training length; the choice is
  the cost model's fastest, compiling included."""
  from posenc import setup as setup_lib
  short = train.setup(helpers.config("sinusoidal", **{"train.num_buckets": 0}))
  assert short.num_train_buckets == 1
  long_c = helpers.config("sinusoidal", "paper", **{"train.num_buckets": 0})
  long_s = train.setup(long_c)
  assert long_s.num_train_buckets == len(long_s.train_lengths)  # 1M steps: one per length
  assert [g for g, _ in long_s.train_buckets()] == [(l,) for l in long_s.train_lengths]
  mid_c = helpers.config("sinusoidal", "default", **{"train.num_buckets": 0})
  mid = train.setup(mid_c)
  plans = data_lib.bucket_plans(mid.task, mid.train_lengths, 64)
  totals = [sum(setup_lib.projected_training_s(mid_c, p, mid.train_lengths)) for p in plans]
  assert mid.num_train_buckets == int(np.argmin(totals)) + 1
  assert 1 < mid.num_train_buckets < len(mid.train_lengths)
  # every plan is train_buckets' own split for that count
  for k, plan in enumerate(plans[:6], start=1):
    assert plan == data_lib.train_buckets(mid.task, mid.train_lengths, k, multiple=1)
  # the choice is one seed's: a seed's programs (its padding, its bits) do not depend on how
  # many seeds share its program, or on whether they share their lengths
  for extra in ({"num_seeds": 6}, {"num_seeds": 6, "train.length_seed": 0}):
    grouped = helpers.config("sinusoidal", "default", **{"train.num_buckets": 0, **extra})
    assert train.setup(grouped).num_train_buckets == mid.num_train_buckets


def test_one_automatic_program_runs_and_reports_its_padding(tmp_path):
  logs = []
  c = helpers.config("sinusoidal", **{"train.num_buckets": 0})
  c.workdir = str(tmp_path / "auto")
  r = train.train_and_evaluate(c, log=logs.append)
  s = train.setup(c)
  padded = s.train_buckets()[0][1]
  assert padded < s.train_padded  # the longest sequence, not rounded up to a multiple of 8
  line = next(l for l in logs if l.startswith("compiled"))
  assert f"compiled 1 training program (one per bucket of lengths, padded to {padded})" in line
  assert "chosen from the run's length (train.num_buckets=0): the cost model projects" in line
  assert r["timing"]["train_programs"] == 1
