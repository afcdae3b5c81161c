"""scripts/benchmark.py runs end to end on the smoke preset and writes what the README reads.

Timings are not checked (they belong to the machine); the structure and the bookkeeping are.
"""

import json
import os
import statistics
import subprocess
import sys

from posenc import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_script_writes_tables_interleaved_medians_seed_speedups_and_buckets(tmp_path):
  # one process for every table (each benchmark process compiles from empty caches)
  out = tmp_path / "bench.json"
  cmd = [sys.executable, "scripts/benchmark.py", "--preset=smoke", "--schemes=alibi,sinusoidal",
         "--steps=2", "--warmup=1", "--rounds=3", "--eval_min=1", "--eval_max=4",
         "--eval_samples=2", "--eval_rounds=2", "--eval_calls=2", "--skip_lm",
         "--buckets=smoke", "--num_buckets=3", "--compare_buckets=2", f"--out={out}"]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  d = json.loads(out.read_text())
  assert not os.path.exists(f"{out}.partial")  # the progress file became the result
  rows = {r["scheme"]: r for r in d["rows"]}
  assert list(rows) == ["sinusoidal", "alibi"]  # the baseline first
  for r in rows.values():
    assert "error" not in r, r
    assert len(r["step_ms_rounds"]) == 3
    assert abs(r["step_ms"] - statistics.median(r["step_ms_rounds"])) < 0.01
    assert r["eval_s"] > 0 and r["tokens_per_s"] > 0
    assert r["eval_programs"] == r["eval_buckets"]  # one program per bucket, nothing else counted
    assert len(r["eval_s_rounds"]) == 2
    assert abs(r["eval_s"] - statistics.median(r["eval_s_rounds"])) < 0.01
    # every round starts from empty caches, so each one compiles, within its own wall time
    assert all(0 < c <= t for c, t in zip(r["eval_compile_s_rounds"], r["eval_s_rounds"]))
    # call by call: two rounds, ratios taken round by round against sinusoidal
    assert len(r["eval_calls_s_rounds"]) == 2 and r["eval_calls_s"] > 0
    assert abs(r["eval_calls_ratio"] - statistics.median(r["eval_calls_ratio_rounds"])) < 1e-4
  assert rows["sinusoidal"]["eval_calls_ratio_rounds"] == [1.0, 1.0]
  assert "| per call × sin. |" in d["markdown"]
  assert "| alibi | encoder |" in d["markdown"] and "| sinusoidal | encoder |" in d["markdown"]
  seeds = d["seeds"]
  devices = parallel.largest_divisor(8, parallel.available_cores())
  assert seeds["num_seeds"] == 8 and seeds["auto_devices"] == devices
  assert seeds["auto_seed_loop"] == ("shard" if devices > 1 else "map")
  for key in ("speedup", "speedup_mapped", "speedup_auto"):
    assert seeds[key] > 0
  assert abs(seeds["speedup_auto"] - seeds["sequential_s_per_step"] / seeds["auto_s_per_step"]) < 1e-9
  # utilisation against the run's matmul rate: 3x needs 3x the sequential steps' utilisation
  rate = d["matmul_gflops"] * 1e9
  work_s = 8 * seeds["step_gflop"] * 1e9 / rate
  assert seeds["step_gflop"] > 0
  assert abs(seeds["mfu_auto"] - work_s / seeds["auto_s_per_step"]) < 1e-6
  assert abs(seeds["mfu_needed_3x"] - 3 * work_s / seeds["sequential_s_per_step"]) < 1e-6
  assert abs(seeds["ceiling_speedup"] * seeds["mfu_needed_3x"] - 3) < 1e-6
  _check_buckets(d["buckets"], rounds=3)


def test_a_scheme_failing_in_the_evaluation_rounds_keeps_its_first_pass_and_the_others(monkeypatch,
                                                                                         capsys):
  from scripts import benchmark

  order = []

  def fake_time_evaluation(s, params, key):
    order.append(s)
    if s == "broken":
      raise RuntimeError("solver failed\nmore detail")
    return {"a": (10.0, 2.0), "b": (20.0, 3.0)}[s]

  monkeypatch.setattr(benchmark, "time_evaluation", fake_time_evaluation)
  monkeypatch.setattr(benchmark, "_EVALS", {n: (n, None, None) for n in ("a", "broken", "b")})
  rows = [{"scheme": "a", "eval_s": 1.0}, {"scheme": "broken", "eval_s": 5.0},
          {"scheme": "b", "eval_s": 1.0}]
  benchmark.interleaved_evaluations(rows, rounds=3)
  a, broken, b = rows
  assert a["eval_s_rounds"] == [10.0] * 3 and a["eval_s"] == 10.0 and a["eval_compile_s"] == 2.0
  assert b["eval_s_rounds"] == [20.0] * 3 and b["eval_s"] == 20.0
  assert broken["eval_s"] == 5.0 and "eval_s_rounds" not in broken
  assert broken["eval_rounds_error"] == "RuntimeError: solver failed"
  # the turn order rotates by one per round; the broken scheme drops out after its failure
  assert order == ["a", "broken", "b", "b", "a", "b", "a"]
  # each timing is reported as it lands (a long run is not silent for its whole duration)
  lines = capsys.readouterr().out.splitlines()
  assert lines[:3] == ["  evaluation round 1/3: a 10.0 s (2.0 s compiling)",
                       "  evaluation round 1/3: broken failed (RuntimeError: solver failed)",
                       "  evaluation round 1/3: b 20.0 s (3.0 s compiling)"]
  assert len(lines) == 7 and lines[-1] == "  evaluation round 3/3: a 10.0 s (2.0 s compiling)"


def test_evaluation_calls_take_turns_call_by_call_and_a_failing_scheme_drops_out(monkeypatch, capsys):
  from posenc import train
  from scripts import benchmark

  ran = []  # (scheme, call index), in the order they ran

  def programs(s, params, key):
    def score(j):
      if s == "broken" and j == 1:
        raise RuntimeError("solver failed\nmore detail")
      ran.append((s, j))
      return j
    # two buckets of 2 and 1 calls; the first call of each compiles and is not timed
    return [train.EvalProgram([1, 2], 4, 2, score, [(1, (0,)), (2, (1,))]),
            train.EvalProgram([3], 4, 2, score, [(3, (2,))])]

  monkeypatch.setattr(benchmark.train, "evaluation_programs", programs)
  monkeypatch.setattr(benchmark, "_EVALS", {n: (n, None, None) for n in ("sinusoidal", "broken", "b")})
  rows = [{"scheme": n} for n in ("sinusoidal", "broken", "b")]
  benchmark.interleaved_eval_calls(rows, rounds=2)
  warm = [("sinusoidal", 0), ("sinusoidal", 2), ("broken", 0), ("broken", 2), ("b", 0), ("b", 2)]
  assert ran[:6] == warm
  # round 1: call 0 in the order s, broken, b; call 1 starts one later (broken fails there);
  # call 2 starts two later; round 2 without the failed scheme
  assert ran[6:] == [("sinusoidal", 0), ("broken", 0), ("b", 0), ("b", 1), ("sinusoidal", 1),
                     ("b", 2), ("sinusoidal", 2), ("sinusoidal", 0), ("b", 0), ("b", 1),
                     ("sinusoidal", 1), ("b", 2), ("sinusoidal", 2)]
  sinusoidal, broken, b = rows
  assert broken == {"scheme": "broken", "eval_calls_error": "RuntimeError: solver failed"}
  assert len(sinusoidal["eval_calls_s_rounds"]) == 2 and sinusoidal["eval_calls_ratio"] == 1.0
  assert len(b["eval_calls_ratio_rounds"]) == 2 and b["eval_calls_ratio"] > 0
  lines = capsys.readouterr().out.splitlines()
  assert [line.split(":")[0] for line in lines] == [
      "  evaluation calls, round 1/2", "  evaluation calls, round 2/2"]
  assert all("sinusoidal " in line and "b " in line and "broken" not in line for line in lines)


def test_a_scheme_with_a_different_evaluation_is_left_out_of_the_call_timing(monkeypatch):
  from posenc import train
  from scripts import benchmark

  def programs(s, params, key):
    calls = [(1, (0,)), (2, (1,))] + ([(3, (2,))] if s == "longer" else [])
    return [train.EvalProgram([1, 2], 4, 2, lambda j: j, calls)]

  monkeypatch.setattr(benchmark.train, "evaluation_programs", programs)
  monkeypatch.setattr(benchmark, "_EVALS", {n: (n, None, None) for n in ("sinusoidal", "longer")})
  rows = [{"scheme": "sinusoidal"}, {"scheme": "longer"}]
  benchmark.interleaved_eval_calls(rows, rounds=1)
  assert rows[0]["eval_calls_ratio"] == 1.0
  assert rows[1] == {"scheme": "longer",
                     "eval_calls_error": "3 evaluation calls against 2: not the same evaluation"}


def _check_buckets(b, rounds):
  assert b["num_buckets"] == 3 and len(b["buckets"]) == 3 and b["lengths"] == [1, 6]
  assert [r["lengths"] for r in b["buckets"]] == [[1, 2], [3, 4], [5, 6]]
  assert abs(sum(r["share"] for r in b["buckets"]) - 1) < 1e-9
  # the average weighs each bucket's median step by its share of the lengths
  assert abs(b["avg_ms"] - sum(r["share"] * r["step_ms"] for r in b["buckets"])) < 1e-9
  assert b["longest_ms"] == b["buckets"][-1]["step_ms"]
  for name, times in b["rounds_ms"].items():
    assert len(times) == rounds and all(t > 0 for t in times), name
  assert abs(b["avg_vs_before"] - b["avg_ms"] / b["before_ms"]) < 1e-9
  assert b["compile_all_s"] > 0
  assert "| bucket 2: lengths 5–6 | 12 |" in b["markdown"]
  # the plan the target is stated against, timed in the same rounds
  assert b["compare_buckets"] == 2 and len(b["compare"]) == 2
  other = sum((r["lengths"][1] - r["lengths"][0] + 1) / 6 * r["step_ms"] for r in b["compare"])
  assert abs(b["compare_avg_ms"] - other) < 1e-9
  assert abs(b["avg_vs_compare"] - b["avg_ms"] / other) < 1e-9
  assert f"is **{b['avg_vs_compare']:.2f}x** of it" in b["markdown"]


def test_atlas_timing_runs_single_seed_runs_against_one_run_and_reports_the_ratio(monkeypatch):
  """--atlas: S single-seed processes one after another against one S-seed process (whole
  runs, the atlas's sweep point), now and, with --atlas_before, with the first v2 protocol."""
  import argparse
  import types
  from scripts import benchmark
  calls = []
  clock = [0.0]

  def fake_run(cmd, **kw):
    calls.append(cmd)
    seeds = next(int(a.split("=")[1]) for a in cmd if a.startswith("--config.num_seeds="))
    clock[0] += 10.0 if seeds == 1 else 20.0 + ("--config.train.num_buckets=1" in cmd) * 10
    return types.SimpleNamespace(returncode=0, stdout="compiled the training step in 1.0s\n",
                                 stderr="")
  monkeypatch.setattr(benchmark.subprocess, "run", fake_run)
  monkeypatch.setattr(benchmark.time, "perf_counter", lambda: clock[0])
  args = argparse.Namespace(atlas_seeds=3, atlas_before=True, atlas_point=7, atlas_steps=50)
  a = benchmark.bench_atlas(args)
  assert len(calls) == 8  # (3 single + 1 together) x 2 protocols
  assert all("--sweep_index=7" in c and "--config.train.steps=50" in c
             and "--config.criterion.every=0" in c for c in calls)
  assert sorted(a["rows"][0]["single_runs_s"]) == [10.0] * 3
  now, before = a["rows"]
  assert now["ratio"] == 30.0 / 20.0 and before["ratio"] == 30.0 / 30.0
  assert "| now | 30.0 | 20.0 | 1.50× |" in a["markdown"]
  assert "now against before: 1.50×" in a["markdown"]


def test_minimal_step_script_times_posenc_beside_a_hand_written_encoder():
  """scripts/minimal_step.py (issue 24's equal-shape comparison) runs and reports both steps."""
  cmd = [sys.executable, "scripts/minimal_step.py", "--preset=smoke", "--rounds=2", "--steps=1"]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = done.stdout.strip().splitlines()
  assert lines[0].startswith("smoke preset step at 16 tokens, batch 4, median of 2 interleaved")
  ms = {line.split()[0]: float(line.split()[1]) for line in lines[1:3]}
  assert set(ms) == {"posenc", "minimal"} and all(v > 0 for v in ms.values())
  assert lines[3].startswith("  posenc / minimal = ")


def test_bucket_timing_also_runs_with_glibcs_default_allocator_in_a_child(tmp_path):
  """--buckets_only with host memory kept adds the same timing under POSENC_MALLOC=system (how
  the steps ran before posenc/host_memory.py) and the ratios against that "before"."""
  out = tmp_path / "b.json"
  cmd = [sys.executable, "scripts/benchmark.py", "--buckets=smoke", "--buckets_only",
         "--num_buckets=2", "--compare_buckets=0", "--steps=1", "--warmup=1", "--rounds=1",
         f"--out={out}"]
  env = {**os.environ, "POSENC_MALLOC": "sync"}
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  d = json.loads(out.read_text())
  assert d["host_memory"] == "kept; programs run on the calling thread"
  g = d["buckets"]["system"]
  assert g["before_ms"] > 0 and g["avg_ms"] > 0 and "system" not in g  # one child, no grandchild
  assert "glibc's default allocator (POSENC_MALLOC=system" in d["buckets"]["markdown"]
