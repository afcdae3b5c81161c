"""Cluster recipes: the commands scripts/tpu_vm_sweep.sh and scripts/slurm_sweep.sh build.

Both scripts take DRY_RUN=1 (print instead of run); the sweep is still counted by
``experiments.sweep --count``, so a narrowed smoke sweep keeps these tests quick.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = "configs/sweeps/chomsky.py:smoke"
NARROW = ("--config.sweep.schemes=rope,alibi", "--config.sweep.tasks=parity_check")  # 2 points


def _script(name, *args, **env):
  full = {k: v for k, v in os.environ.items() if k not in ("MODE", "WORKERS", "POSENC_WORKDIR_LOCK",
                                                         "SLURM_ARRAY_TASK_ID", "DRY_RUN")}
  full.update(env)
  return subprocess.run(["bash", f"scripts/{name}", *args], cwd=ROOT, env=full,
                        capture_output=True, text=True, timeout=180)


def _ssh_commands(out: str) -> list[tuple[str, str]]:
  """(vm, remote command) of each printed ``gcloud ... ssh`` line."""
  found = []
  for line in out.splitlines():
    if line.startswith("gcloud "):
      words = shlex.split(line)
      assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], words
      assert "--worker=all" in words
      (command,) = [w[len("--command="):] for w in words if w.startswith("--command=")]
      found.append((words[5], command))
  return found


def _bash_syntax_ok(command: str) -> None:
  r = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
  assert r.returncode == 0, (command, r.stderr)


def test_tpu_shard_mode_runs_a_share_of_the_sweep_on_each_worker():
  r = _script("tpu_vm_sweep.sh", "vm-a,vm-b", "zone-1", SWEEP, "/shared/my root", *NARROW,
              DRY_RUN="1", WORKERS="4,1")
  assert r.returncode == 0, r.stderr
  assert "2 point(s) of configs/sweeps/chomsky.py:smoke; 5 worker(s) on 2 VM(s); mode shard" in r.stdout
  (vm_a, a), (vm_b, b) = _ssh_commands(r.stdout)
  assert (vm_a, vm_b) == ("vm-a", "vm-b")
  for command, offset in ((a, 0), (b, 4)):
    _bash_syntax_ok(command)
    assert "python -m experiments.sweep --config=configs/sweeps/chomsky.py:smoke" in command
    assert f"--shard=$((W + {offset}))/5" in command
    assert "--root=/shared/my\\ root" in command
    assert "--config.sweep.schemes=rope\\,alibi --config.sweep.tasks=parity_check" in command
    assert "experiments.run" not in command and "--distributed" not in command
  assert "TPU_HOST_BOUNDS=1,1,1" in a  # a multi-host VM: each worker as its own one-host slice
  assert "TPU_HOST_BOUNDS" not in b    # a one-host VM is a whole slice already


def test_tpu_multihost_mode_runs_each_point_as_one_distributed_run_over_the_slice():
  r = _script("tpu_vm_sweep.sh", "vm-a", "zone-1", SWEEP, "/shared/r", *NARROW,
              DRY_RUN="1", WORKERS="4", MODE="multihost", POSENC_WORKDIR_LOCK="off")
  assert r.returncode == 0, r.stderr
  ((vm, command),) = _ssh_commands(r.stdout)
  _bash_syntax_ok(command)
  # Every worker runs the same points, 0..N-1 in order, each a jax.distributed run.
  assert "for i in $(seq 0 1); do" in command
  run = re.search(r"python -m experiments\.run [^;]*", command).group(0)
  assert shlex.split(run) == [
      "python", "-m", "experiments.run", "--config=configs/sweeps/chomsky.py:smoke",
      "--sweep_index=$i", "--distributed", "--config.workdir=/shared/r",
      "--config.sweep.schemes=rope,alibi", "--config.sweep.tasks=parity_check"]
  assert "experiments.sweep" not in command and "--shard" not in command
  assert "POSENC_WORKDIR_LOCK=off python -m experiments.run" in command
  assert "TPU_HOST_BOUNDS" not in command  # the slice stays one slice
  assert "trap '' HUP" in command and command.rstrip().endswith("&")


def test_tpu_script_refuses_an_unknown_mode_and_a_wrong_worker_list():
  r = _script("tpu_vm_sweep.sh", "vm-a", "z", SWEEP, "/r", DRY_RUN="1", WORKERS="1",
              MODE="lockstep")
  assert r.returncode == 2 and "MODE must be shard or multihost, not 'lockstep'" in r.stderr
  r = _script("tpu_vm_sweep.sh", "vm-a,vm-b", "z", SWEEP, "/r", *NARROW, DRY_RUN="1", WORKERS="4")
  assert r.returncode == 2 and "WORKERS=4 gives 1 count(s) for 2 VM(s)" in r.stderr


def test_slurm_submits_one_array_task_per_point():
  r = _script("slurm_sweep.sh", SWEEP, "/scratch/sw", *NARROW, DRY_RUN="1")
  assert r.returncode == 0, r.stderr
  assert shlex.split(r.stdout.strip()) == [
      "sbatch", "--array=0-1%64", "--output=/scratch/sw/slurm/%A_%a.out",
      "scripts/slurm_sweep.sh", SWEEP, "/scratch/sw", *NARROW]


def test_slurm_array_task_runs_its_point(tmp_path):
  r = _script("slurm_sweep.sh", SWEEP, str(tmp_path), *NARROW, DRY_RUN="1",
              SLURM_ARRAY_TASK_ID="1")
  assert r.returncode == 0, r.stderr
  assert shlex.split(r.stdout.strip()) == [
      "python", "-m", "experiments.run", f"--config={SWEEP}", "--sweep_index=1",
      f"--config.workdir={tmp_path}", *NARROW]
  # The same task for real, asked only to show its config: point 1 is rope on parity_check (alibi is 0).
  r = _script("slurm_sweep.sh", SWEEP, str(tmp_path), *NARROW, "--show_config",
              SLURM_ARRAY_TASK_ID="1")
  assert r.returncode == 0, r.stderr
  assert "sweep point 1 of 2: scheme=rope task.name=parity_check seed=0" in r.stdout
  assert re.search(rf"^  workdir\s+{re.escape(str(tmp_path))}/rope-parity_check-seed0\s", r.stdout, re.M)
