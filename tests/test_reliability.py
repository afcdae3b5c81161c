"""Reliability: a run killed at any moment resumes to the same bits; damage, divergence and a
scheme's runtime failure stop or recover cleanly; nothing unpickles or evaluates stored text."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import train
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Same XLA settings as this process (tests/conftest.py), so subprocess and in-process runs compile
# the same programs and can be compared bit for bit.
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
       "PYTHONUNBUFFERED": "1"}
STEPS = 8
OVERRIDES = {"train.steps": STEPS, "checkpoint.every_steps": 2, "checkpoint.max_to_keep": 2,
             "eval.max_length": 8, "eval.num_buckets": 1}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Callable[[], tuple[str, dict]]:
  """The uninterrupted run (in this process), computed on first use: ``() -> (workdir, results)``."""
  cache: dict = {}

  def get():
    if not cache:
      c = helpers.config("sinusoidal", **OVERRIDES)
      c.workdir = str(tmp_path_factory.mktemp("reference") / "whole")
      cache["run"] = (c.workdir, train.train_and_evaluate(c, log=lambda *_: None))
    return cache["run"]

  return get


def _command(workdir) -> list[str]:
  return [sys.executable, "-m", "experiments.run", "--config=configs/sinusoidal.py:smoke",
          f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def _leaves(workdir) -> list[np.ndarray]:
  params, _ = train.load_params(str(workdir))
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _check_outputs_consistent(workdir) -> None:
  """After a kill: results.json is whole or absent, and DONE never exists without it."""
  results = os.path.join(workdir, "results.json")
  if os.path.exists(results):
    json.loads(open(results).read())
  assert not os.path.exists(os.path.join(workdir, "DONE")) or os.path.exists(results)


def _kill_when(proc: subprocess.Popen, ready: Callable[[str], bool], timeout: float = 240) -> dict:
  """Starts a thread that SIGKILLs ``proc`` once ``ready(output so far)`` holds; returns its log."""
  log = {"output": "", "killed": False}

  def read():
    for line in proc.stdout:
      log["output"] += line

  def watch():
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end:
      if ready(log["output"]):
        proc.send_signal(signal.SIGKILL)
        log["killed"] = True
        break
      time.sleep(0.002)
    proc.wait()
    reader.join(timeout=5)

  log["thread"] = threading.Thread(target=watch, daemon=True)
  log["thread"].start()
  return log


def test_sigkill_at_any_point_then_restart_gives_the_same_bits(tmp_path, reference):
  wd = tmp_path / "killed"
  ckpts = wd / "checkpoints"

  # Kill 1: as soon as the first checkpoint starts to appear. This usually lands mid-save, when
  # only orbax's "2.orbax-checkpoint-tmp" folder exists; otherwise just after step 2 is saved.
  def first_checkpoint(_):
    try:
      return bool(os.listdir(ckpts))
    except FileNotFoundError:
      return False

  run1 = subprocess.Popen(_command(wd), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  log1 = _kill_when(run1, first_checkpoint)
  ref_dir, ref_results = reference()  # meanwhile, the uninterrupted run, in this process
  log1["thread"].join()
  assert log1["killed"] and run1.returncode == -signal.SIGKILL, log1["output"][-2000:]
  _check_outputs_consistent(wd)
  assert not (wd / "results.json").exists()

  # What a kill can leave behind: a half-written checkpoint of a later step, a cut metrics line.
  leftover = ckpts / "6.orbax-checkpoint-tmp"
  leftover.mkdir(parents=True, exist_ok=True)
  (leftover / "_CHECKPOINT_METADATA").write_text("{trunc")
  with open(wd / "metrics.jsonl", "a") as f:
    f.write('{"step": 99, "loss": 0.')

  # Kill 2: during evaluation (after the final checkpoint, before results.json).
  run2 = subprocess.Popen(_command(wd), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  log2 = _kill_when(run2, lambda out: "evaluating lengths" in out)
  log2["thread"].join()
  assert log2["killed"] and run2.returncode == -signal.SIGKILL, log2["output"][-2000:]
  assert "evaluating lengths" in log2["output"]
  _check_outputs_consistent(wd)
  assert not (wd / "results.json").exists() and not (wd / "DONE").exists()

  # Restart with the same command: it finishes from the final checkpoint.
  run3 = subprocess.run(_command(wd), cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=240)
  assert run3.returncode == 0, run3.stderr[-2000:]
  assert f"resumed from checkpoint at step {STEPS}" in run3.stdout
  assert (wd / "DONE").exists()
  for a, b in zip(_leaves(ref_dir), _leaves(wd), strict=True):
    np.testing.assert_array_equal(a, b)  # bit for bit
  results = json.loads((wd / "results.json").read_text())
  assert results["per_length"] == ref_results["per_length"]
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(2, STEPS + 1, 2))
  assert not glob.glob(str(ckpts / "*.orbax-checkpoint-tmp*"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's threads
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, reference):
  ref_dir, _ = reference()
  wd = tmp_path / "run"
  shutil.copytree(ref_dir, wd)
  for name in ("DONE", "results.json"):
    (wd / name).unlink()
  c = helpers.config("sinusoidal", **OVERRIDES)  # the reference's config (workdir may differ)
  c.workdir = str(wd)
  # Damage the latest step: every data file of its array store is overwritten with junk.
  files = glob.glob(str(wd / "checkpoints" / str(STEPS) / "**" / "d" / "*"), recursive=True)
  assert files
  for path in files:
    with open(path, "wb") as f:
      f.write(b"not a checkpoint")
  logs: list[str] = []
  capsys.readouterr()
  train.train_and_evaluate(c, log=logs.append)
  out = capsys.readouterr().out
  assert re.search(rf"warning: checkpoint at step {STEPS} is unreadable .*moved it to "
                   r".*damaged_checkpoints", out), out
  assert f"resumed from checkpoint at step {STEPS - 2}" in logs
  assert os.listdir(wd / "damaged_checkpoints")
  # The last two steps were redone from the previous checkpoint: the same bits as uninterrupted.
  for a, b in zip(_leaves(ref_dir), _leaves(wd), strict=True):
    np.testing.assert_array_equal(a, b)
  assert (wd / "DONE").exists()


def test_nan_loss_stops_with_the_step_and_cause_and_keeps_the_last_good_checkpoint(tmp_path):
  # Warm-up keeps the first update at learning rate 0 (finite checkpoint at step 2); the next
  # updates are ~1e27 and overflow.
  c = helpers.config("sinusoidal", **{"train.learning_rate": 1e30, "train.warmup_steps": 1000,
                                      "train.steps": 6, "train.log_every": 1})
  c.workdir = str(tmp_path / "nan")
  with pytest.raises(train.TrainingDiverged) as info:
    train.train_and_evaluate(c, log=lambda *_: None)
  msg = str(info.value)
  assert "\n" not in msg
  assert re.search(r"diverged at step [34]\b", msg), msg
  assert "learning_rate" in msg and "last good checkpoint (step 2) is kept" in msg
  params, step = train.load_params(c.workdir)
  assert step == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))
  assert not (tmp_path / "nan" / "results.json").exists()
  assert not (tmp_path / "nan" / "DONE").exists()


def test_a_solver_error_inside_a_step_becomes_one_line(tmp_path, monkeypatch):
  """What FLOATER's ``eqx.branched_error_if`` raises from inside the jitted step, at step 3."""
  import equinox as eqx

  make = train.make_train_step

  def failing_step(s):
    step_fn = make(s)

    def wrapped(state, key):
      new, metrics = step_fn(state, key)
      new["step"] = eqx.error_if(new["step"], new["step"] >= 3,
                                 "FLOATER ODE solver: test failure. Raise config.encoding.max_steps.",
                                 on_error="raise")  # whatever EQX_ON_ERROR experiments/ set
      return new, metrics

    return wrapped

  monkeypatch.setattr(train, "make_train_step", failing_step)
  c = helpers.config("sinusoidal", **{"train.steps": 6})
  c.workdir = str(tmp_path / "solver")
  with pytest.raises(train.TrainingDiverged) as info:
    train.train_and_evaluate(c, log=lambda *_: None)
  msg = str(info.value)
  assert "\n" not in msg and len(msg) < 600, msg
  assert re.match(r"training failed (at step 3|between steps \d and [3-6]): FLOATER ODE solver: "
                  r"test failure\. Raise config\.encoding\.max_steps; the last good checkpoint "
                  r"\(step 2\) is kept$", msg), msg
  assert train.load_params(c.workdir)[1] == 2
  assert not (tmp_path / "solver" / "results.json").exists()


def test_a_solver_error_during_evaluation_becomes_one_line(tmp_path, monkeypatch):
  import equinox as eqx

  def failing_evaluate(s, params, key, log=None, num_seeds=1):
    check = lambda x: eqx.error_if(x, x > 0, "FLOATER ODE solver: at length 9", on_error="raise")
    return jax.device_get(jax.jit(check)(jnp.ones(())))

  monkeypatch.setattr(train, "evaluate", failing_evaluate)
  c = helpers.config("sinusoidal", **{"train.steps": 0})
  c.workdir = str(tmp_path / "eval")
  with pytest.raises(train.TrainingDiverged, match=r"^evaluation failed: FLOATER ODE solver: at "
                     r"length 9; no training step was run$"):
    train.train_and_evaluate(c, log=lambda *_: None)
  assert not (tmp_path / "eval" / "results.json").exists()


def test_runtime_error_messages_are_one_line():
  text = ("INTERNAL: CpuCallback error calling callback: Traceback (most recent call last):\n"
          '  File "x.py", line 1, in f\n_EquinoxRuntimeError: FLOATER ODE solver: the solve did '
          "not reach the last position. Raise --config.encoding.max_steps.\n\n\n----\nAn error "
          "occurred during the runtime of your JAX program!\n----\n")
  assert train.runtime_error_message(ValueError(text)) == (
      "FLOATER ODE solver: the solve did not reach the last position. Raise "
      "--config.encoding.max_steps")
  assert train.runtime_error_message(ValueError("a plain bug")) is None
  assert train.runtime_error_message(KeyError("x")) is None


UNSAFE = re.compile(r"\bpickle\b|\bcPickle\b|\bdill\b|\bshelve\b|\bmarshal\.loads?\b|(?<![\w.])eval\(|"
                    r"(?<![\w.])exec\(|\byaml\.load\(|\byaml\.unsafe_load\b|allow_pickle\s*=\s*True|"
                    r"\bjoblib\.load\b|\btorch\.load\b")


def test_nothing_unpickles_or_evaluates_stored_text():
  me = os.path.abspath(__file__)
  hits = []
  for dirpath, dirnames, filenames in os.walk(ROOT):
    dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in (
        "runs", "__pycache__", "node_modules", "build", "dist") and not d.endswith(".egg-info")]
    for name in filenames:
      path = os.path.join(dirpath, name)
      if not name.endswith(".py") or os.path.abspath(path) == me:
        continue
      with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
          if UNSAFE.search(line.split("#", 1)[0]):
            hits.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
  assert not hits, "\n".join(hits)
