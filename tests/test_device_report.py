"""scripts/device_report.py (the table of scripts/device_check.sh) in its --cpu dry-run mode."""

from __future__ import annotations

import json
import math
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_dry_run_reports_speed_and_a_seeded_run(tmp_path):
  from scripts import device_report
  out = tmp_path / "report.json"
  report = device_report.main(["--cpu", "--schemes=sinusoidal", "--dtypes=bfloat16", "--steps=2",
                               "--run_steps=2", f"--out={out}"])
  assert json.loads(out.read_text())["markdown"] == report["markdown"]
  assert report["device"]["backend"] == "cpu" and report["preset"] == "smoke"
  (row,) = report["rows"]
  assert "error" not in row, row
  assert row["dtype"] == "bfloat16" and row["steps_per_s"] > 0 and row["tokens_per_s"] > 0
  assert 0 < row["mfu"] < 1 and row["eval_programs"] >= 1
  run = report["seeded_run"]
  assert "error" not in run, run
  assert run["num_seeds"] == 2 and run["seed_loop"] == "vmap" and run["steps"] == 2
  assert len(run["in_range_per_seed"]) == 2
  assert all(0 <= x <= 1 for x in run["in_range_per_seed"] if not math.isnan(x))
  table = report["markdown"]
  assert "| sinusoidal | encoder | bfloat16 |" in table and "2 seeds (vmap)" in table


def test_device_check_refuses_a_cpu_without_dry_run(tmp_path):
  """Without --cpu, a machine whose JAX sees no accelerator stops before any work, saying why."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(["bash", "scripts/device_check.sh", "--no-install", "--out", str(tmp_path)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 3, done.stdout + done.stderr
  assert "JAX sees no accelerator" in done.stderr and "--cpu" in done.stderr
