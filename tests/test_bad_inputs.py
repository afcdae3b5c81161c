"""Bad inputs a new user tries: each is refused with ONE line that names the field and a fix, a
non-zero exit status, and nothing written or overwritten.

Most cases go through ``train.train_and_evaluate`` in this process (what ``experiments.run``
calls after parsing flags); a representative set goes through the real command line, in
parallel subprocesses, including everything only the flag parser sees.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
import pytest

from experiments import sweeping
from posenc import encodings, reporting, train
from posenc.errors import ConfigError
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
# A fix is always offered: the message says what to do.
FIX = re.compile(r"\b(must|choose|pick|raise|set|use|pass|point|shorten|lower|leave|drop|e\.g\.)\b")


def snapshot(path) -> dict[str, tuple[int, int]]:
  """``{relative path: (size, mtime_ns)}`` of everything under ``path`` (empty if absent)."""
  out = {}
  if os.path.isfile(path):
    st = os.stat(path)
    return {".": (st.st_size, st.st_mtime_ns)}
  for dirpath, dirnames, filenames in os.walk(path):
    for name in dirnames + filenames:
      full = os.path.join(dirpath, name)
      st = os.stat(full)
      out[os.path.relpath(full, path)] = (st.st_size if name in filenames else 0, st.st_mtime_ns)
  return out


def make_run_folder(workdir: str, scheme: str = "sinusoidal", **overrides: Any) -> ml_collections.ConfigDict:
  """A run's folder as its first checkpoint leaves it (config.json + a checkpoint of the initial
  state at step 2), without compiling a training step."""
  c = helpers.config(scheme, **overrides)
  c.workdir = workdir
  s = train.setup(c)
  state = train.init_state(s, train.root_keys(c.seed)["init"])
  os.makedirs(workdir)
  reporting.atomic_write_json(os.path.join(workdir, "config.json"), c.to_dict())
  mngr = train.checkpoint_manager(s)
  mngr.save(2, args=ocp.args.StandardSave(state), force=True)
  mngr.wait_until_finished()
  return c


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory) -> str:
  return make_run_folder(str(tmp_path_factory.mktemp("previous") / "run")).workdir


def _unwritable(tmp_path) -> str:
  """A directory this process cannot create: permissions do not stop root, /proc does."""
  if os.geteuid() == 0:
    if not os.path.isdir("/proc"):
      pytest.skip("running as root without /proc: no unwritable place to try")
    return "/proc/posenc-test-workdir"
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  return str(locked / "run")


# (scheme, overrides, the field the message must name). Each is one thing a new user gets wrong.
CASES = {
    "unknown scheme": ("sinusoidal", {"encoding.name": "sinusodial"}, "config.encoding.name"),
    "unknown task": ("sinusoidal", {"task.name": "reverse"}, "config.task.name"),
    "negative width": ("sinusoidal", {"model.d_model": -16}, "config.model.d_model"),
    "zero batch": ("sinusoidal", {"train.batch_size": 0}, "config.train.batch_size"),
    "zero layers": ("sinusoidal", {"model.num_layers": 0}, "config.model.num_layers"),
    "negative steps": ("sinusoidal", {"train.steps": -1}, "config.train.steps"),
    "zero checkpoint interval": ("sinusoidal", {"checkpoint.every_steps": 0},
                                 "config.checkpoint.every_steps"),
    "heads do not divide": ("sinusoidal", {"model.num_heads": 3}, "config.model.num_heads"),
    "odd head width": ("sinusoidal", {"model.num_heads": 16}, "config.model.d_model"),
    "dropout of 1": ("sinusoidal", {"model.dropout": 1.0}, "config.model.dropout"),
    "unknown activation": ("sinusoidal", {"model.activation": "tanh"}, "config.model.activation"),
    "eval range reversed": ("sinusoidal", {"eval.min_length": 20}, "config.eval.min_length"),
    "train range reversed": ("sinusoidal", {"task.train_min_length": 7},
                             "config.task.train_min_length"),
    "unknown position sampler": ("sinusoidal", {"positions.kind": "random"}, "config.positions.kind"),
    "training beyond a learned table": ("learned", {"encoding.max_len": 8}, "config.encoding.max_len"),
    "evaluation beyond randomized positions": (
        "sinusoidal", {"positions.kind": "randomized", "positions.max_position": 12},
        "config.positions.max_position"),
    "NoPE in an encoder": ("none", {"model.causal": False}, "config.model.causal"),
    "xPos in an encoder": ("xpos", {"model.causal": False}, "config.model.causal"),
    "warm start from nowhere": ("sinusoidal", {"init.from_workdir": "/nonexistent/run"},
                                "config.init.from_workdir"),
    "unknown scheme option": ("learned", {"encoding.fallback": "wrap"}, "config.encoding.fallback"),
    "unknown seed loop": ("sinusoidal", {"seed_loop": "parallel"}, "config.seed_loop"),
    "greedy decoding in an encoder": ("sinusoidal", {"eval.greedy": True}, "config.eval.greedy"),
    "evaluation passes that do not divide the batch": ("sinusoidal", {"eval.micro_batch": 3},
                                                       "config.eval.micro_batch"),
    "NaN learning rate": ("sinusoidal", {"train.learning_rate": float("nan")},
                          "config.train.learning_rate"),
    "infinite RoPE base": ("rope", {"encoding.base": float("inf")}, "config.encoding.base"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_mistakes_are_refused_before_anything_is_written(case, tmp_path):
  scheme, overrides, field = CASES[case]
  c = helpers.config(scheme, **overrides)
  c.workdir = str(tmp_path / "run")
  before = snapshot(tmp_path)
  with pytest.raises(ConfigError) as info:
    train.train_and_evaluate(c, log=lambda *_: None)
  msg = str(info.value)
  assert info.value.field == field and msg.startswith(f"{field}: "), msg
  assert "\n" not in msg and FIX.search(msg), msg
  assert snapshot(tmp_path) == before


def test_every_float_field_of_every_scheme_refuses_nan_and_infinity():
  """NaN passes every ``< 0`` check and would only surface as a diverged loss steps later."""
  checked = 0
  for scheme in encodings.names():
    base = sweeping.scheme_config(scheme, "smoke")
    fields = [k for k, v in sweeping.flatten(base).items() if isinstance(v, float)]
    assert "train.learning_rate" in fields, (scheme, fields)
    for key in fields:
      for bad in (math.nan, math.inf, -math.inf):
        c = copy.deepcopy(base)
        sweeping.set_field(c, key, bad, where="test")
        with pytest.raises(ConfigError) as info:
          train.setup(c)
        msg = str(info.value)
        assert info.value.field == f"config.{key}", (scheme, key, msg)
        assert f"must be a finite number, got {bad}" in msg and FIX.search(msg), msg
        checked += 1
  assert checked >= 3 * 15


# tupe and multiplicative size their tables to the training positions and read no row past them
# (a larger max_len does not help): their refusals are tested in tests/test_tupe.py and
# tests/test_multiplicative.py.
@pytest.mark.parametrize("scheme, extra", [("learned", {}), ("learned", {"positions.offset": 7})])
def test_a_position_table_too_short_is_told_the_size_that_works(scheme, extra):
  c = helpers.config(scheme, **{"eval.max_length": 100000, **extra})
  with pytest.raises(ConfigError) as info:
    train.setup(c)
  m = re.search(r"positions up to (\d+) are needed .* raise --config\.encoding\.max_len to at "
                r"least (\d+)\b", str(info.value))
  assert m, str(info.value)
  needed, hint = int(m[1]), int(m[2])
  assert needed >= 100000 and hint == needed + 1
  c.encoding.max_len = hint  # the suggested size works ...
  train.setup(c)
  c.encoding.max_len = hint - 1  # ... and is the smallest that does
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    train.setup(c)


def test_workdir_mistakes_are_refused(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder\n")
  for workdir, expected in ((str(a_file), "is a file, not a directory"),
                            (str(a_file / "run"), "is a file, so"),
                            (_unwritable(tmp_path), "writ")):
    c = helpers.config("sinusoidal")
    c.workdir = workdir
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError) as info:
      train.train_and_evaluate(c, log=lambda *_: None)
    msg = str(info.value)
    assert msg.startswith("--workdir: ") and expected in msg and "\n" not in msg, msg
    assert FIX.search(msg), msg
    assert snapshot(tmp_path) == before
    assert not os.path.exists(workdir) or os.path.isfile(workdir)


def test_a_workdir_of_another_architecture_is_refused(previous_run, tmp_path):
  before = snapshot(previous_run)
  # With its config.json: the saved config differs.
  c = helpers.config("sinusoidal", **{"model.d_model": 32})
  c.workdir = previous_run
  with pytest.raises(ConfigError, match=r"^--workdir: .* holds a run with a different config "
                     r"\(differs in model\.d_model\); choose a new --workdir$"):
    train.train_and_evaluate(c, log=lambda *_: None)
  assert snapshot(previous_run) == before
  # Without it (e.g. deleted): the checkpoint's own shapes refuse it, and nothing is set aside.
  bare = tmp_path / "bare"
  shutil.copytree(previous_run, bare)
  (bare / "config.json").unlink()
  before = snapshot(bare)
  c.workdir = str(bare)
  with pytest.raises(ConfigError, match=r"^--workdir: .* holds checkpoints of a different model "
                     r"\(parameter \S+: \(\d+, 16\) there, \(\d+, 32\) here\); choose a new "
                     r"--workdir, or use the model config of that run$"):
    train.train_and_evaluate(c, log=lambda *_: None)
  assert snapshot(bare) == before


def test_a_warm_start_of_other_shapes_is_refused(previous_run, tmp_path):
  c = helpers.config("sinusoidal", **{"model.d_ff": 64})
  c.init.from_workdir = previous_run
  c.workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match=r"^config\.init\.from_workdir: parameter layer0_ff1/bias "
                     r"has shape \(32,\) in .* but \(64,\) here; the two runs' model configs differ$"):
    train.train_and_evaluate(c, log=lambda *_: None)
  assert not os.path.exists(c.workdir)


def test_the_command_line_gives_one_line_and_a_status(previous_run, tmp_path):
  """The real command line, several cases at once (each is its own process)."""
  smoke = "--config=configs/sinusoidal.py:smoke"
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  cases = {
      # name: (arguments, exit status, pattern of the one stderr line)
      "no config file": (["--config=configs/sinusodial.py"], 2,
                         r"^--config: no config file 'configs/sinusodial\.py'; available: .*"
                         r"configs/sinusoidal\.py"),
      "no --config": ([], 2, r"^--config: required, e\.g\. --config=configs/"),
      "unknown preset": (["--config=configs/sinusoidal.py:smok"], 2,
                         r"unknown preset 'smok'; choose one of default, smoke, paper"),
      "unknown override": ([smoke, "--config.train.stpes=3"], 2,
                           r"^--config\.train\.stpes: no such config field"),
      "unknown section": ([smoke, "--config.optim.lr=3"], 2,
                          r"^--config\.optim\.lr: no such config field"),
      "wrong type": ([smoke, "--config.train.steps=ten"], 2,
                     r"--config\.train\.steps=ten: invalid literal for int\(\)"),
      "stray argument": ([smoke, "train"], 2, r"^unexpected arguments: train; every setting is a flag"),
      "heads do not divide": ([smoke, "--config.model.num_heads=3"], 2,
                              r"^config\.model\.num_heads: 3 heads do not divide d_model=16; pick"),
      "workdir under a file": ([smoke, f"--workdir={a_file}/run"], 2, r"^--workdir: .* is a file, so"),
      "changed architecture": ([smoke, "--config.model.d_model=32", f"--workdir={previous_run}"], 2,
                               r"^--workdir: .* holds a run with a different config \(differs in "
                               r"model\.d_model\); choose a new --workdir$"),
      "solver fails at init": (["--config=configs/floater.py:smoke", "--config.encoding.max_steps=2",
                                f"--workdir={tmp_path / 'floater'}"], 2,
                               r"^config\.encoding: the floater scheme failed while initialising the "
                               r"model: FLOATER ODE solver: .*config\.encoding\.max_steps"),
      "NaN learning rate": ([smoke, "--config.train.learning_rate=nan", f"--workdir={tmp_path / 'lr'}"],
                            2, r"^config\.train\.learning_rate: must be a finite number, got nan; "),
      "diverges": ([smoke, "--config.train.learning_rate=1e30", "--config.train.warmup_steps=1000",
                    "--config.train.steps=6", f"--workdir={tmp_path / 'nan'}"], 3,
                   r"^training diverged at step [34]: loss or gradient norm is NaN/Inf; likely cause: "
                   r"learning rate too high .*; the last good checkpoint \(step 2\) is kept$"),
  }
  before = snapshot(tmp_path), snapshot(previous_run)
  procs = {name: subprocess.Popen([sys.executable, "-m", "experiments.run", *args], cwd=ROOT,
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name, (args, _, _) in cases.items()}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    _, status, pattern = cases[name]
    lines = err.splitlines()
    assert proc.returncode == status, (name, proc.returncode, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-3000:])
    assert re.search(pattern, lines[0][len("error: "):]), (name, lines[0])
    assert "Traceback" not in out, name
  # Nothing written or overwritten, except by the one run that did train before it diverged.
  after = snapshot(tmp_path)
  assert {k: v for k, v in after.items() if not k.startswith("nan")} == before[0]
  assert snapshot(previous_run) == before[1]
  nan = tmp_path / "nan"
  assert not (nan / "results.json").exists() and not (nan / "DONE").exists()
  assert train.load_params(str(nan))[1] == 2
