"""Training to a criterion (config.criterion, posenc.criterion).

A criterion run stops at the first check whose in-range score reaches the threshold, with the
parameters a plain run of that many steps ends with; it resumes to the same step and
parameters after a kill (mid-training, or after it stopped); it equals a run without the
criterion bit for bit when the threshold is never reached; several seeds in one program each
stop with their own single-seed run's parameters.
"""

import json
import os

import jax
import numpy as np
import pytest

from posenc import criterion, train
from posenc.checkpoints import load_params
from posenc.errors import ConfigError
from tests import helpers
from tests.test_scale import _assert_same_params

SCHEME = "sinusoidal"
CAP = 16


def _run(tmp_path, name, **overrides):
  c = helpers.config(SCHEME, **{"train.steps": CAP, "checkpoint.every_steps": 2, **overrides})
  c.workdir = str(tmp_path / name)
  return train.train_and_evaluate(c, log=lambda *_: None), c.workdir


def _params(workdir):
  return jax.device_get(load_params(workdir)[0])


def _assert_same(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def _first_crossing(curve, threshold):
  return next((step for step, v in curve if v >= threshold), None)


_RECORDED_RUNS = {}  # seed -> the workdir of its run in `recorded` (trained to the cap)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """A run that records its checks without stopping: the in-range curve of seeds 0 and 1."""
  tmp = tmp_path_factory.mktemp("criterion")
  out = {}
  for seed in (0, 1):
    r, wd = _run(tmp, f"record{seed}", seed=seed, **{"criterion.every": 2, "criterion.stop": False})
    out[seed] = r["criterion"]["curve"]
    _RECORDED_RUNS[seed] = wd
  return out


def _threshold(curve):
  """A threshold first crossed strictly inside the run (after the first check, before the cap)."""
  best = -1.0
  for step, v in curve:
    if v > best and best >= 0 and step < CAP:
      return (best + v) / 2, step
    best = max(best, v)
  pytest.fail(f"the smoke curve never rises: {curve}")


def test_stops_where_in_range_accuracy_crosses_and_resumes_to_the_same_step(tmp_path, recorded):
  curve = recorded[0]
  thr, t = _threshold(curve)
  assert _first_crossing(curve, thr) == t
  crit = {"criterion.every": 2, "criterion.threshold": thr}
  r, wd = _run(tmp_path, "stop", **crit)
  assert r["learned"] is True and r["criterion"]["step"] == t and r["steps_trained"] == t
  assert [s for s, _ in r["criterion"]["curve"]] == list(range(2, t + 1, 2))
  assert r["criterion"]["curve"] == [p for p in curve if p[0] <= t]
  # the parameters a plain run of t steps ends with
  _, plain = _run(tmp_path, "plain", **{"train.steps": t})
  _assert_same(_params(wd), _params(plain))

  # killed mid-training: the first sitting ends at step t - 2 (its cap), the second resumes
  _, wd2 = _run(tmp_path, "killed", **crit, **{"train.steps": t - 2})
  r2, _ = _run(tmp_path, "killed", **crit)
  assert r2["criterion"]["step"] == t and r2["steps_trained"] == t
  assert r2["criterion"]["curve"] == r["criterion"]["curve"]
  _assert_same(_params(wd2), _params(wd))

  # killed after it stopped, before its results: it stops at the same step again
  for name in ("results.json", "DONE"):
    os.remove(os.path.join(wd, name))
  r3, _ = _run(tmp_path, "stop", **crit)
  assert r3["criterion"]["step"] == t and r3["steps_trained"] == t
  assert r3["per_length"] == r["per_length"]
  _assert_same(_params(wd), _params(plain))


def test_never_reached_equals_a_run_without_the_criterion_bit_for_bit(tmp_path, recorded):
  r, wd = _run(tmp_path, "unreached", **{"criterion.every": 4, "criterion.threshold": 1.0})
  assert r["learned"] is False and r["criterion"]["step"] is None and r["steps_trained"] == CAP
  plain, wd0 = _run(tmp_path, "plain")
  assert "criterion" not in plain
  assert r["per_length"] == plain["per_length"]
  _assert_same(_params(wd), _params(wd0))
  with open(os.path.join(wd, criterion.LOG_FILE)) as f:
    assert [json.loads(line)["step"] for line in f] == [4, 8, 12, 16]
  # killed after training, before its results: the check at the cap is read again
  for name in ("results.json", "DONE"):
    os.remove(os.path.join(wd, name))
  again, _ = _run(tmp_path, "unreached", **{"criterion.every": 4, "criterion.threshold": 1.0})
  assert again["criterion"] == r["criterion"] and again["per_length"] == r["per_length"]


def test_seeds_in_one_program_each_stop_with_their_single_runs_parameters(tmp_path, recorded):
  # a threshold both seeds cross before the cap, each at its own step
  thr = min(max(v for _, v in recorded[k]) for k in (0, 1)) - 1e-6
  steps = [_first_crossing(recorded[k], thr) for k in (0, 1)]
  assert all(steps)
  crit = {"criterion.every": 2, "criterion.threshold": thr}
  singles = [_run(tmp_path, f"single{k}", seed=k, **crit)[1] for k in (0, 1)]
  r, wd = _run(tmp_path, "pair", num_seeds=2, **crit)
  assert r["learned_seeds"] == 2 and r["steps_trained"] == max(steps)
  assert [c["step"] for c in r["criterion_per_seed"]] == steps
  stacked = _params(wd)
  for k in (0, 1):  # in one process the seeds are mapped (lax.map): equal up to float noise
    _assert_same_params(jax.tree_util.tree_map(lambda x: x[k], stacked), _params(singles[k]))
    with open(os.path.join(wd, "seeds", f"seed{k}", "results.json")) as f:
      seed = json.load(f)
    assert seed["criterion"]["step"] == steps[k] and seed["steps_trained"] == steps[k]
  # each seed's own training curve, to the step it learned (the program skips a learned seed's
  # steps): the run's is the mean of the seeds still training
  whole = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  per_seed = [{row["step"]: row for row in map(json.loads, open(
      os.path.join(wd, "seeds", f"seed{k}", "metrics.jsonl")))} for k in (0, 1)]
  for k in (0, 1):
    assert list(per_seed[k]) == [row["step"] for row in whole if row["step"] <= steps[k]]
  for row in whole:
    rows = {k: p[row["step"]] for k, p in enumerate(per_seed) if row["step"] in p}
    np.testing.assert_allclose(row["loss"], np.mean([p["loss"] for p in rows.values()]), rtol=1e-6)
    if "criterion" in row:
      assert all(p["criterion"] == row["criterion"][k] for k, p in rows.items())
  assert per_seed[0][whole[0]["step"]]["loss"] != per_seed[1][whole[0]["step"]]["loss"]


def test_seeds_that_train_on_past_the_criterion_end_as_their_single_runs(tmp_path, recorded):
  """criterion.stop = False: every seed trains to the cap, in one program as on its own, and
  reports the parameters its single run ends with (not those of the step it learned at)."""
  thr = min(_threshold(recorded[k])[0] for k in (0, 1))  # both learn before the cap
  r, wd = _run(tmp_path, "pair", num_seeds=2, **{"criterion.every": 2, "criterion.threshold": thr,
                                                 "criterion.stop": False})
  assert r["learned_seeds"] == 2 and r["steps_trained"] == CAP
  assert all(c["step"] < CAP for c in r["criterion_per_seed"])
  stacked = _params(wd)
  for k in (0, 1):
    _assert_same_params(jax.tree_util.tree_map(lambda x: x[k], stacked), _params(_RECORDED_RUNS[k]))


def test_a_skipped_seed_keeps_its_state_and_the_others_their_bits():
  """train.skippable: the programs of several seeds that stop at a criterion take which seeds
  to train. With every seed training they give the unchanged programs' bits; a seed switched
  off keeps its state (step counter included) while the others go on exactly as before."""
  c = helpers.config(SCHEME, num_seeds=2, seed_loop="map", **{"train.num_buckets": 2})
  s = train.setup(c)
  keys = train.root_keys(c.seed, 2)

  unchanged = train.step_programs(s, keys["train"], 0)
  skipping = train.step_programs(s, keys["train"], 0, skip=True)
  assert not unchanged.skips and skipping.skips and len(skipping.buckets) == 2

  def steps(progs, active_at):
    state = train.initial_state(s, keys["init"])
    saved = []
    for t in range(4):
      extra = (jax.device_put(np.array(active_at(t))),) if progs.skips else ()
      state, m = progs.run(state, keys["train"], t, *extra)
      saved.append((jax.device_get(state), jax.device_get(m)))
    return saved

  # Under this suite's XLA flags (most optimisations off) the branch moves the last bits, as
  # any change of program may (tests/test_scale.py's tolerance); with XLA's defaults, as the
  # atlas runs, it gave the unchanged programs' bits (docs/throughput.md, measured).
  plain = steps(unchanged, None)
  every = steps(skipping, lambda t: [True, True])
  for (a, ma), (b, mb) in zip(plain, every):
    _assert_same_params(a, b)
    _assert_same_params(ma, mb)
  off = steps(skipping, lambda t: [True, t < 2])  # seed 1 stops after step 2
  seed = lambda tree, k: jax.tree_util.tree_map(lambda x: x[k], tree)
  for t, (state, m) in enumerate(off):
    _assert_same(seed(state, 0), seed(every[t][0], 0))  # the same program, seed 0 unaffected
    _assert_same(seed(state, 1), seed(off[min(t, 1)][0], 1))  # held, bit for bit
    if t >= 2:
      assert all(float(v[1]) == 0.0 for v in m.values())  # no step: zeros, not read
  assert int(off[-1][0]["step"][1]) == 2 and int(off[-1][0]["step"][0]) == 4


def test_criterion_fields_are_checked_before_compute():
  for field, value, fix in (("every", -1, "non-negative"), ("threshold", 1.5, "(0, 1]"),
                            ("top_fraction", 0.0, "longest quarter"), ("metric", "bleu", "choose"),
                            ("samples_per_length", 0, "positive")):
    c = helpers.config(SCHEME, **{f"criterion.{field}": value})
    with pytest.raises(ConfigError, match=f"config.criterion.{field}") as e:
      train.setup(c)
    assert fix in str(e.value)
  c = helpers.config(SCHEME, **{"criterion.every": 5, "criterion.metric": "exact_match"})
  with pytest.raises(ConfigError, match="eval.greedy"):
    train.setup(c)


def test_checked_lengths_are_the_top_of_the_training_range():
  c = helpers.config(SCHEME, **{"task.train_min_length": 1, "task.train_max_length": 12})
  assert criterion.lengths(c) == [10, 11, 12]
  c.criterion.top_fraction = 1.0
  assert criterion.lengths(c) == list(range(1, 13))
  c.criterion.top_fraction = 0.01
  assert criterion.lengths(c) == [12]
  c.model.causal, c.eval.greedy = True, True
  assert criterion.metric(c) == "exact_match"


def test_a_fixed_evaluation_seed_shares_the_samples_between_seeds():
  from posenc.seeds import evaluation_key, root_keys
  c = helpers.config(SCHEME, num_seeds=2, **{"eval.seed": 7})
  key = evaluation_key(c, root_keys(0, 2)["eval"])
  np.testing.assert_array_equal(key[0], key[1])
  np.testing.assert_array_equal(key[0], root_keys(7)["eval"])
  c.eval.seed = -1
  key = evaluation_key(c, root_keys(0, 2)["eval"])
  np.testing.assert_array_equal(key[1], root_keys(1)["eval"])


def test_default_presets_train_to_the_criterion_and_lm_is_refused_one():
  assert helpers.config(SCHEME, "default").criterion.every > 0
  assert helpers.config("floater", "default").criterion.every > 0
  from configs.lm import base as lm_base
  lm = lm_base.get_config("smoke")
  assert lm.criterion.every == 0
  lm.criterion.every = 2
  with pytest.raises(ConfigError, match="config.criterion.every.*own evaluation protocol"):
    train.setup(lm)



def test_rsqrt_schedule_warms_up_then_decays_without_knowing_the_cap():
  """``train.schedule = "rsqrt"``: linear warm-up to the learning rate, then lr * sqrt(w / n) at
  optimizer step n >= w: the same rates whatever ``train.steps`` (a seed stopped by the
  criterion had the schedule it would have had under any cap)."""
  for steps in (1000, 50_000):
    c = helpers.config(SCHEME, **{"train.schedule": "rsqrt", "train.warmup_steps": 100,
                                  "train.learning_rate": 2e-3, "train.steps": steps})
    lr = train.learning_rate(c)
    np.testing.assert_allclose([float(lr(n)) for n in (0, 50, 100, 300, 10_000)],
                               [0.0, 1e-3, 2e-3, 2e-3 * np.sqrt(100 / 300), 2e-3 * 0.1], rtol=1e-6)
  c = helpers.config(SCHEME, **{"train.schedule": "linear"})
  with pytest.raises(ConfigError, match="config.train.schedule"):
    train.train_and_evaluate(c, log=lambda *_: None)
