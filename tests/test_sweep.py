"""Sweeps: points and their resolution, the command lines, a tiny local sweep, collect."""

from __future__ import annotations

import csv
import json
import math
import ast
import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from experiments import collect, sweeping
from posenc import encodings, sweeps, tasks, train
from posenc.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOMSKY = os.path.join(ROOT, "configs", "sweeps", "chomsky.py")
DECODER = os.path.join(ROOT, "configs", "sweeps", "decoder.py")
LM = os.path.join(ROOT, "configs", "sweeps", "lm.py")


def _module(path):
  return sweeping.load_module(path)


def _valid(mode):
  return [n for n in encodings.names() if mode in encodings.get(n).MODES]


def _tasks(levels=("R", "DCF", "CS")):
  return [n for n, c in tasks.registry().items() if c.level in levels]


def _cli(*args, timeout=120):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env)


# ----------------------------------------------------------------------------- points


@pytest.mark.parametrize("path,mode,causal,levels", [
    (CHOMSKY, "encoder", False, ("R", "DCF", "CS")),
    (DECODER, "decoder", True, ("R", "DCF", "CS", "decoder"))])
def test_point_counts_keys_and_modes(path, mode, causal, levels):
  m = _module(path)
  schemes, task_names = _valid(mode), _tasks(levels)
  assert len(_tasks()) >= 15
  for preset, seeds in (("smoke", 1), (None, 2)):
    config = m.get_config(preset)
    pts = m.get_sweep(config)
    assert len(pts) == len(schemes) * len(task_names) * seeds
    assert all(list(p) == ["scheme", "task.name", "seed"] for p in pts)
    assert {p["scheme"] for p in pts} == set(schemes)
    assert {p["task.name"] for p in pts} == set(task_names)
    assert {p["seed"] for p in pts} == set(range(seeds))
    assert len({tuple(p.items()) for p in pts}) == len(pts)
  resolved = sweeping.resolve_all(m, m.get_config("smoke"))
  assert all(c.model.causal is causal for _, c in resolved)
  assert all(c.encoding.name == p["scheme"] for p, c in resolved)
  assert all("sweep" not in c for _, c in resolved)
  # The paper preset adds the published learning-rate axis.
  paper = m.get_sweep(m.get_config("paper"))
  if path == CHOMSKY:
    assert {p["train.learning_rate"] for p in paper} == {1e-4, 3e-4, 5e-4}
    assert len(paper) == len(schemes) * len(task_names) * 10 * 3


def test_filters_narrow_the_sweep_and_reject_unknown_or_invalid():
  m = _module(CHOMSKY)
  c = m.get_config("smoke")
  c.sweep.schemes, c.sweep.tasks, c.sweep.seeds = "rope, sinusoidal", "parity_check", 3
  pts = m.get_sweep(c)
  assert [(p["scheme"], p["seed"]) for p in pts] == [("rope", 0), ("sinusoidal", 0), ("rope", 1),
                                                      ("sinusoidal", 1), ("rope", 2), ("sinusoidal", 2)]
  c.sweep.schemes = "ropee"
  with pytest.raises(ConfigError, match="config.sweep.schemes.*'ropee'"):
    m.get_sweep(c)
  c.sweep.schemes = "none"  # valid only in a decoder
  with pytest.raises(ConfigError, match="not valid in an encoder"):
    m.get_sweep(c)


def _imports(path):
  """Every module a Python file imports (at any depth: lazy imports in functions too)."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      out.add(node.module)
  return out


def test_layers_sweep_files_and_configs_never_import_experiments(tmp_path):
  """configs are data the experiments layer reads; posenc sits below both."""
  config_files = glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
  sweep_files = glob.glob(os.path.join(ROOT, "configs", "sweeps", "*.py"))
  assert {CHOMSKY, DECODER, LM} <= set(sweep_files) and len(sweep_files) >= 5
  upward = {p: sorted(m for m in _imports(p) if m.split(".")[0] == "experiments")
            for p in config_files}
  assert {p: m for p, m in upward.items() if m} == {}
  library = glob.glob(os.path.join(ROOT, "posenc", "**", "*.py"), recursive=True)
  upward = {p: sorted(m for m in _imports(p) if m.split(".")[0] in ("experiments", "configs"))
            for p in library}
  assert {p: m for p, m in upward.items() if m} == {}
  # The check itself sees an upward import, lazy or not.
  lazy = tmp_path / "lazy.py"
  lazy.write_text("import os\n\ndef f():\n  from experiments.sweeping import grid\n")
  assert _imports(str(lazy)) == {"os", "experiments.sweeping"}


def test_the_documented_example_sweep_file_runs(tmp_path):
  """configs/sweeps/__init__.py's example, as a file: every encoder scheme × R tasks × 3 seeds."""
  import configs.sweeps
  doc = configs.sweeps.__doc__
  example = doc.split("at 500 steps::\n", 1)[1].split("\nHow a point", 1)[0]
  path = tmp_path / "regular.py"
  path.write_text(textwrap.dedent(example))
  m = sweeping.load_module(str(path))
  c = m.get_config("smoke")
  resolved = sweeping.resolve_all(m, c)
  assert len(resolved) == len(_valid("encoder")) * len(_tasks(("R",))) * 3
  assert {cfg.train.steps for _, cfg in resolved} == {500}
  assert [p["seed"] for p, _ in resolved] == sorted(p["seed"] for p, _ in resolved)
  assert os.path.dirname(resolved[0][1].workdir) == os.path.join("runs", "sweeps", "regular-smoke")
  c.sweep.tasks = "reverse_string"
  with pytest.raises(ConfigError, match=r"config\.sweep\.tasks.*'reverse_string' is not a regular task"):
    m.get_sweep(c)


def test_scheme_swap_equals_the_scheme_config_plus_shared_settings_plus_point():
  m = _module(CHOMSKY)
  base = m.get_config()  # default preset: shared settings change steps, eval, ...
  point = {"scheme": "learned", "task.name": "bucket_sort", "seed": 1}
  got = sweeping.resolve(base, point)
  # Built by hand, independently: configs/learned.py + the sweep's shared settings + the point.
  from configs import learned
  want = learned.get_config("default")
  want.model.causal = False
  want.train.steps, want.train.warmup_steps = 1000, 50
  want.eval.max_length, want.eval.samples_per_length = 40, 64
  want.eval.batch_size, want.eval.num_buckets, want.checkpoint.every_steps = 64, 3, 250
  want.task.name, want.seed = "bucket_sort", 1
  want.workdir = got.workdir
  assert got.to_dict() == want.to_dict()
  assert train.config_hash(got) == train.config_hash(want)
  assert got.encoding.max_len == 128  # learned's own field, from its config file


def _sweep_file(tmp_path, points, name="bad"):
  path = tmp_path / f"{name}.py"
  path.write_text(textwrap.dedent(f"""
      from configs.sweeps import sweep_config

      def get_config(arg=None):
        return sweep_config(arg, name={name!r}, shared={{"train.steps": 3}})

      def get_sweep(config):
        return {points!r}
      """))
  return str(path)


@pytest.mark.parametrize("points,match", [
    ([{"task.name": "parity_check"}, {"traim.steps": 5}], r"traim\.steps.*sweep point 1"),
    ([{"train.stpes": 5}], r"train\.stpes.*no such config field"),
    ([{"scheme": "rope", "encoding.max_len": 8}], r"encoding\.max_len.*scheme 'rope'"),
    ([{"encoding.name": "rope"}], r"use the key 'scheme'"),
    ([{"scheme": "nosuch"}], r"unknown scheme 'nosuch'"),
    ([{"train.steps": "many"}], r"train\.steps.*bad value"),
    ([{"seed": 0}, {"seed": 0}], r"same workdir"),
])
def test_a_bad_key_or_value_is_an_error_naming_it(tmp_path, points, match):
  path = _sweep_file(tmp_path, points, name=f"bad{abs(hash(match)) % 10**6}")
  m = sweeping.load_module(path)
  with pytest.raises(ConfigError, match=match):
    sweeping.resolve_all(m, m.get_config("smoke"))


def test_workdirs_are_deterministic_and_named_by_the_point(tmp_path):
  m = _module(CHOMSKY)

  def dirs():
    c = m.get_config("smoke")
    c.workdir = str(tmp_path)
    return [cfg.workdir for _, cfg in sweeping.resolve_all(m, c)]

  first = dirs()
  assert first == dirs() and len(set(first)) == len(first)
  assert os.path.join(str(tmp_path), "rope-parity_check-seed0") in first
  c = m.get_config("smoke")
  named = sweeping.resolve(c, {"scheme": "rope", "task.name": "parity_check",
                               "train.learning_rate": 0.003, "seed": 2})
  assert os.path.basename(named.workdir) == "rope-parity_check-learning_rate0.003-seed2"
  assert os.path.dirname(named.workdir) == os.path.join("runs", "sweeps", "chomsky-smoke")


def test_command_line_overrides_win_over_the_point_and_the_shared_settings():
  m = _module(CHOMSKY)
  c = m.get_config("smoke")
  point = {"scheme": "rope", "task.name": "parity_check", "seed": 0}
  cli = {"seed": 7, "task.name": "bucket_sort", "model.causal": True, "encoding.base": 100.0,
         "sweep.seeds": 4, "workdir": "/somewhere"}
  c.workdir = "/somewhere"
  got = sweeping.resolve(c, point, 0, cli)
  assert (got.seed, got.task.name, got.model.causal, got.encoding.base) == (7, "bucket_sort", True, 100.0)
  assert got.workdir == "/somewhere/rope-bucket_sort-seed7"
  # An encoding field the point's scheme lacks: an error naming the flag.
  with pytest.raises(ConfigError, match=r"--config\.encoding\.base.*scheme 'alibi'"):
    sweeping.resolve(c, {**point, "scheme": "alibi"}, 3, cli)


def test_lm_sweep_or_a_clear_error_until_its_task_lands():
  m = _module(LM)
  c = m.get_config("smoke")
  assert c.model.causal is True
  if sweeps.lm_task() is None:
    with pytest.raises(ConfigError, match="language-modelling task has not landed"):
      m.get_sweep(c)
    return
  resolved = sweeping.resolve_all(m, c)
  assert sorted(p["scheme"] for p, _ in resolved) == _valid("decoder")
  assert all(cfg.task.name == sweeps.lm_task() and cfg.model.causal for _, cfg in resolved)
  # Fixed-size tables are made long enough for the longest evaluated length, so setup accepts them.
  learned = next(cfg for p, cfg in resolved if p["scheme"] == "learned")
  assert os.path.basename(learned.workdir).startswith("learned-lm-max_len")
  assert sweeping.unrunnable(resolved, [i for i, (p, _) in enumerate(resolved)
                                        if p["scheme"] in ("learned", "rope")]) == []


# ----------------------------------------------------------------------------- command lines


_NARROW = ["--config.sweep.schemes=rope,alibi", "--config.sweep.tasks=parity_check"]


def test_count_and_print_commands(tmp_path):
  out = _cli("experiments.sweep", "--config=configs/sweeps/chomsky.py:smoke", "--count", *_NARROW)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "2"
  out = _cli("experiments.sweep", "--config=configs/sweeps/chomsky.py", "--print_commands",
             *_NARROW, "--config.train.steps=3", f"--root={tmp_path}")
  assert out.returncode == 0, out.stderr
  common = " ".join([*_NARROW, "--config.train.steps=3", f"--config.workdir={tmp_path}"])
  assert out.stdout.splitlines() == [
      f"python -m experiments.run --config=configs/sweeps/chomsky.py:default --sweep_index={i} "
      + common for i in range(4)]  # the default preset has 2 seeds
  out = _cli("experiments.sweep", "--config=configs/sweeps/chomsky.py:smoke", "--count",
             "--config.sweep.tasks=parity_chek")
  assert out.returncode == 2 and "config.sweep.tasks" in out.stderr and "parity_chek" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1


def test_commands_quote_and_replace_the_root():
  overrides = {"workdir": "/old", "sweep.tasks": "a b", "train.learning_rate": 0.001}
  lines = sweeping.commands("configs/sweeps/chomsky.py", "default", 1, overrides, "/new")
  assert lines == ["python -m experiments.run --config=configs/sweeps/chomsky.py:default "
                   "--sweep_index=0 '--config.sweep.tasks=a b' --config.train.learning_rate=0.001 "
                   "--config.workdir=/new"]
  assert sweeping.parse_shard("1/3") == (1, 3)
  with pytest.raises(ConfigError, match="--shard"):
    sweeping.parse_shard("3/3")


_RESOLVE_IN_RUN = """
import json, sys
from absl import flags
from experiments import run
flags.FLAGS(sys.argv)
print(json.dumps(run.sweep_point(run._CONFIG.value).to_dict()))
"""


def test_sweep_index_in_experiments_run_lets_command_line_overrides_win(tmp_path):
  """experiments.run's own flag parsing (config_flags applies overrides before the point)."""
  args = [sys.executable, "-c", _RESOLVE_IN_RUN, "--config=configs/sweeps/chomsky.py:smoke",
          "--sweep_index=1", *_NARROW, f"--config.workdir={tmp_path}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  plain = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert plain.returncode == 0, plain.stderr
  got = json.loads(plain.stdout.splitlines()[-1])  # points: alibi, rope (the schemes' own order)
  assert (got["encoding"]["name"], got["task"]["name"], got["seed"]) == ("rope", "parity_check", 0)
  assert got["workdir"] == os.path.join(str(tmp_path), "rope-parity_check-seed0")
  assert "sweep" not in got and got["train"]["steps"] == 4
  over = subprocess.run(args + ["--config.seed=5", "--config.train.steps=9",
                                "--config.task.name=bucket_sort", "--config.model.causal=True"],
                        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
  assert over.returncode == 0, over.stderr
  got = json.loads(over.stdout.splitlines()[-1])
  assert (got["seed"], got["train"]["steps"], got["task"]["name"], got["model"]["causal"]) == \
      (5, 9, "bucket_sort", True)
  assert got["encoding"]["name"] == "rope"  # the point still picks the scheme
  assert got["workdir"] == os.path.join(str(tmp_path), "rope-bucket_sort-seed5")


# ----------------------------------------------------------------------------- a local sweep


def test_tiny_local_sweep_runs_skips_finished_points_and_resumes(tmp_path, capsys):
  m = _module(CHOMSKY)
  c = m.get_config("smoke")
  c.sweep.schemes, c.sweep.tasks = "sinusoidal,learned", "parity_check"
  c.workdir = str(tmp_path)
  # As --config.x=y would: one evaluation program, fewer lengths (keeps the test short).
  resolved = sweeping.resolve_all(m, c, {"eval.num_buckets": 1, "eval.max_length": 8})
  assert len(resolved) == 2 and resolved[1][1].eval.num_buckets == 1
  quiet = lambda *_: None
  status = sweeping.run_points(resolved, log=quiet)
  assert status == {"ran": [0, 1], "skipped": [], "elsewhere": [], "failed": []}
  out = capsys.readouterr().out
  assert "sweep: 1 point run in " in out and "; 1 left, about " in out  # after the first point
  assert "sweep: 2 points run in " in out and "none of this worker's points left" in out
  results = [tmp_path / f"{s}-parity_check-seed0" / "results.json" for s in ("learned", "sinusoidal")]
  assert [str(p.parent) for p in results] == [cfg.workdir for _, cfg in resolved]
  mtimes = [os.stat(p).st_mtime_ns for p in results]
  for p in results:
    assert json.loads(p.read_text())["steps"] == 4
  capsys.readouterr()

  # Re-run: both points are finished and skipped, nothing rewritten.
  status = sweeping.run_points(resolved, log=quiet)
  assert status == {"ran": [], "skipped": [0, 1], "elsewhere": [], "failed": []}
  assert [os.stat(p).st_mtime_ns for p in results] == mtimes
  assert capsys.readouterr().out.count("skip (finished)") == 2

  # A point killed after its last checkpoint but before DONE resumes instead of restarting.
  os.remove(results[1].parent / "DONE")
  os.remove(results[1])
  logs = []
  status = sweeping.run_points(resolved, log=logs.append)
  assert status == {"ran": [1], "skipped": [0], "elsewhere": [], "failed": []}
  assert any("resumed from checkpoint at step 4" in l for l in logs)
  assert os.stat(results[0]).st_mtime_ns == mtimes[0]

  # A shard takes every n-th point.
  assert sweeping.run_points(resolved, (1, 2), log=quiet)["skipped"] == [1]


# ----------------------------------------------------------------------------- collect


IN = {("rope", "reverse_string"): [0.9, 0.8, 1.0], ("rope", "parity_check"): [0.6, 0.5, 0.55],
      ("alibi", "reverse_string"): [1.0, 1.0, 0.97], ("alibi", "parity_check"): [0.5, 0.52, 0.54]}
OUT = {("rope", "reverse_string"): [0.5, 0.6, 0.4], ("rope", "parity_check"): [0.5, 0.5, 0.5],
       ("alibi", "reverse_string"): [0.7, 0.9, 0.8], ("alibi", "parity_check"): [0.49, 0.51, 0.5]}


def _fake_run(folder, scheme, task, seed, in_score, out_score, mode="encoder", extra=None):
  folder.mkdir(parents=True)
  per_length = {str(l): in_score for l in range(1, 5)}
  per_length.update({str(l): out_score for l in range(5, 9)})
  results = {"scheme": scheme, "task": task, "seed": seed, "preset": "smoke", "steps": 10,
             "mode": mode, "train_range": [1, 4], "eval_range": [1, 8], "per_length": per_length,
             "in_range_score": in_score, "out_of_range_score": out_score, "config_hash": "x",
             **(extra or {})}
  (folder / "results.json").write_text(json.dumps(results))
  (folder / "DONE").write_text("x\n")


def test_collect_tables_csv_and_plots_from_hand_made_results(tmp_path):
  runs = tmp_path / "runs"
  for (scheme, task), ins in IN.items():
    for seed, (i, o) in enumerate(zip(ins, OUT[(scheme, task)])):
      _fake_run(runs / "a" / f"{scheme}-{task}-seed{seed}", scheme, task, seed, i, o)
  _fake_run(runs / "b" / "rope-dec", "rope", "parity_check", 0, 0.7, 0.6, mode="decoder",
            extra={"greedy": {"in_range_exact_match": 0.25, "out_of_range_exact_match": 0.0,
                              "per_length_exact_match": {"1": 0.5, "8": 0.0}}})
  for seed, (bpb, ppl) in enumerate(((1.5, 9.0), (1.7, 11.0))):  # the LM task's results format
    _fake_run(runs / "c" / f"rope-lm-{seed}", "rope", "lm", seed, bpb, 2 * bpb, mode="decoder",
              extra={"per_length": {"4": 3.0, "8": 5.0, "16": ppl}, "train_range": [4, 4],
                     "lm": {"train_length": 4}})
  out_dir = tmp_path / "report"
  got = collect.collect([str(runs)], str(out_dir), log=lambda *_: None)
  assert len(got) == 15

  with open(out_dir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 15
  row = next(r for r in rows if r["label"] == "rope [encoder]" and r["task"] == "reverse_string"
             and r["seed"] == "2")
  assert float(row["in_range_score"]) == 1.0 and float(row["out_of_range_score"]) == 0.4

  # Independent arithmetic: max, and mean ± sample std, in %.
  def cell_best(key):
    return f"{100 * max(IN[key]):.1f} / {100 * max(OUT[key]):.1f}"

  def cell_mean(key):
    def one(v):
      return f"{100 * sum(v) / len(v):.1f} ± {100 * math.sqrt(sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1)):.1f}"
    return f"{one(IN[key])} / {one(OUT[key])}"

  md = (out_dir / "results.md").read_text()
  best_part, mean_part = md.split("**Mean ± std")
  for key in IN:
    label = f"{key[0]} [encoder]"
    best_row = next(l for l in best_part.splitlines() if l.startswith(f"| {label} |"))
    mean_row = next(l for l in mean_part.splitlines() if l.startswith(f"| {label} |"))
    header = next(l for l in best_part.splitlines() if l.startswith("| scheme |"))
    col = [h.strip() for h in header.strip("|").split("|")].index(key[1])
    assert best_row.strip("|").split("|")[col].strip() == cell_best(key)
    assert mean_row.strip("|").split("|")[col].strip().startswith(cell_mean(key))
  assert cell_best(("rope", "reverse_string")) == "100.0 / 60.0"  # the arithmetic itself
  assert "| rope [decoder] |" in md  # another mode is another row
  assert "70.0 / 60.0" in md

  mean_part, exact_part = mean_part.split("**Greedy exact match")
  exact_part, interval_part = exact_part.split("**Out of range: mean [95% bootstrap interval]")
  # Learned: the top quarter of lengths 1-4 (length 4, the in-range score) >= 0.95; 3 seeds'
  # 95% bootstrap interval is their range; fewer than half learned: not ranked.
  interval_row = next(l for l in interval_part.splitlines() if l.startswith("| rope [encoder] |"))
  assert "50.0 [40.0, 60.0] max 60.0 1/3 not ranked" in interval_row
  alibi_row = next(l for l in interval_part.splitlines() if l.startswith("| alibi [encoder] |"))
  assert "80.0 [70.0, 90.0] max 90.0 3/3 |" in alibi_row
  assert row["learned"] == "1" and row["learned_by"] == "accuracy ≥ 0.95 at length 4"
  exact_row = next(l for l in exact_part.splitlines() if l.startswith("| rope [decoder] |"))
  assert "25.0 / 0.0" in exact_row  # only the decoder run that decoded greedily has a cell
  assert not any("%" in l or "." in l for l in exact_part.splitlines()
                 if l.startswith("| alibi [encoder] |"))
  dec_row = next(r for r in rows if r["label"] == "rope [decoder]" and r["task"] == "parity_check")
  assert float(dec_row["greedy_in_range_exact_match"]) == 0.25
  assert row["greedy_in_range_exact_match"] == ""
  with open(out_dir / "results_per_length.csv") as f:
    exact = [r for r in csv.DictReader(f) if r["metric"] == "greedy_exact_match"]
  assert [(r["length"], float(r["value"])) for r in exact] == [("1", 0.5), ("8", 0.0)]

  lm_row = next(l for l in mean_part.splitlines() if l.startswith("| rope [decoder] |"))
  assert "1.60 ± 0.14 / 3.20 ± 0.28" in lm_row  # bits per byte, lower is better
  assert "1.50 / 3.00" in best_part  # best = the minimum for language modelling
  lengths, mean, _ = collect.curves(got, "lm", "perplexity")["rope [decoder]"]
  np.testing.assert_allclose(mean, [3.0, 5.0, 10.0])

  plots = sorted(os.listdir(out_dir / "plots"))
  assert plots == ["all_tasks.png", "lm_perplexity.png", "parity_check.png", "reverse_string.png"]
  lengths, mean, std = collect.curves(got, "reverse_string")["alibi [encoder]"]
  np.testing.assert_allclose(mean[lengths == 6], [0.8])
  np.testing.assert_allclose(std[lengths == 6], [0.1])


def test_collect_command_prints_the_table(tmp_path):
  _fake_run(tmp_path / "r1", "rope", "parity_check", 0, 0.75, 0.5)
  out = _cli("experiments.collect", str(tmp_path), f"--out={tmp_path / 'rep'}", timeout=60)
  assert out.returncode == 0, out.stderr
  assert "| rope | 75.0 / 50.0 |" in out.stdout
  assert (tmp_path / "rep" / "results.md").exists()


def test_points_that_cannot_run_are_found_before_any_training(tmp_path):
  m = _module(CHOMSKY)
  c = m.get_config("smoke")
  c.sweep.schemes, c.sweep.tasks, c.workdir = "learned,rope", "parity_check", str(tmp_path)
  resolved = sweeping.resolve_all(m, c, {"eval.max_length": 400})  # beyond learned's 128 rows
  problems = sweeping.unrunnable(resolved, range(len(resolved)))
  assert [i for i, _ in problems] == [0] and "config.encoding.max_len" in problems[0][1]
  assert not os.listdir(tmp_path)
