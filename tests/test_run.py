"""The training script end to end: golden numbers, outputs, resume, evaluation programs."""

import json
import os

import jax
import numpy as np
import pytest

from posenc import train
from tests import helpers

# One step on the smoke config from seed 0. These pin the rng tree, data pipeline, model
# and optimizer: an unintended change to any of them shows up here.
GOLDEN = {
    False: {"loss": 1.0774805545806885, "grad_norm": 4.764216899871826, "accuracy": 0.30},
    True: {"loss": 0.9880008697509766, "grad_norm": 1.6396715641021729, "accuracy": 0.45},
}


@pytest.mark.parametrize("causal", [False, True])
def test_one_step_golden_numbers(causal):
  c = helpers.config("sinusoidal", **{"model.causal": causal})
  s = train.setup(c)
  keys = train.root_keys(c.seed)
  state = train.init_state(s, keys["init"])
  _, m = jax.jit(train.make_train_step(s))(state, keys["train"])
  for k, v in GOLDEN[causal].items():
    np.testing.assert_allclose(float(m[k]), v, rtol=2e-5, err_msg=k)


def test_run_writes_everything(tmp_path):
  results = helpers.run_smoke(tmp_path, "sinusoidal", plots=True)
  wd = tmp_path / "sinusoidal-run"
  for name in ("config.json", "metrics.jsonl", "results.json", "DONE", "plots/accuracy.png",
               "plots/training.png"):
    assert (wd / name).exists(), name
  saved = json.loads((wd / "results.json").read_text())
  assert saved == results
  assert saved["eval_programs"] <= 2 and saved["steps"] == 4
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4]
  assert os.listdir(wd / "tensorboard")
  helpers.check_smoke_results(results)
  # A finished run is not redone.
  again = helpers.run_smoke(tmp_path, "sinusoidal")
  assert again == results


def _final_params(workdir):
  params, _ = train.load_params(str(workdir))
  return jax.tree_util.tree_leaves(params)


def test_resume_equals_uninterrupted(tmp_path):
  whole = helpers.config("sinusoidal", **{"train.steps": 6})
  whole.workdir = str(tmp_path / "whole")
  train.train_and_evaluate(whole, log=lambda *_: None)

  part = helpers.config("sinusoidal", **{"train.steps": 4})
  part.workdir = str(tmp_path / "parts")
  train.train_and_evaluate(part, log=lambda *_: None)
  part.train.steps = 6
  logs = []
  train.train_and_evaluate(part, log=logs.append)
  assert any("resumed from checkpoint at step 4" in l for l in logs)
  for a, b in zip(_final_params(tmp_path / "whole"), _final_params(tmp_path / "parts")):
    np.testing.assert_array_equal(a, b)
  rows = [json.loads(l) for l in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [2, 4, 6]


def test_same_seed_same_numbers_other_seed_differs(tmp_path):
  runs = []
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    c = helpers.config("sinusoidal", seed=seed)
    c.workdir = str(tmp_path / name)
    runs.append(train.train_and_evaluate(c, log=lambda *_: None))
  assert runs[0]["per_length"] == runs[1]["per_length"]
  a, c = _final_params(tmp_path / "a"), _final_params(tmp_path / "c")
  assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_evaluation_compiles_one_program_per_bucket():
  c = helpers.config("sinusoidal", **{"eval.min_length": 41, "eval.max_length": 500,
                                      "eval.num_buckets": 8})
  s = train.setup(c)
  assert len(s.eval_buckets) <= 10
  covered = [l for lengths, _ in s.eval_buckets for l in lengths]
  assert covered == list(range(41, 501))


def test_warm_start_copies_matching_parameters(tmp_path):
  src = helpers.config("sinusoidal")
  src.workdir = str(tmp_path / "src")
  train.train_and_evaluate(src, log=lambda *_: None)
  dst = helpers.config("learned", **{"train.steps": 0})
  dst.init.from_workdir = src.workdir
  dst.workdir = str(tmp_path / "dst")
  logs = []
  train.train_and_evaluate(dst, log=logs.append)
  assert any("1 fresh: encoding/table" in l for l in logs)
  params, _ = train.load_params(src.workdir)
  s = train.setup(dst)
  fresh = train.init_state(s, train.root_keys(0)["init"])["params"]
  new, copied, left = train.warm_start(fresh, params, "src")
  assert left == ["encoding/table"]
  np.testing.assert_array_equal(new["embed"]["embedding"], params["embed"]["embedding"])
