"""One writer per workdir: a run's lock refuses a second run while the first lives, dies with a
SIGKILLed holder, and lets sweep workers that share a root split the points between them."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from experiments import sweeping
from posenc import workdir_lock
from posenc.errors import ConfigError
from tests import helpers
from tests.test_bad_inputs import snapshot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",
       "PYTHONUNBUFFERED": "1"}
ENV.pop(workdir_lock.ENV_VAR, None)
HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def _locks_on(monkeypatch):
  monkeypatch.delenv(workdir_lock.ENV_VAR, raising=False)


def _hold(workdir) -> subprocess.Popen:
  """Another process holding ``workdir``'s lock (what a live run does), once it says so."""
  proc = subprocess.Popen([sys.executable, "-m", "posenc.workdir_lock", "--hold", str(workdir)],
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  line = proc.stdout.readline()
  assert line.startswith(f"holding {workdir} (host {HOST}, pid {proc.pid}, started "), (
      line, proc.stderr.read() if proc.poll() is not None else "")
  return proc


def _kill(proc: subprocess.Popen) -> None:
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL


def _ask(workdir) -> tuple[int, str]:
  """``python -m posenc.workdir_lock DIR`` from another process: (status, its line)."""
  r = subprocess.run([sys.executable, "-m", "posenc.workdir_lock", str(workdir)], cwd=ROOT,
                     env=ENV, capture_output=True, text=True, timeout=60)
  return r.returncode, r.stdout.strip()


# ----------------------------------------------------------------------------- the lock itself


def test_a_lock_refuses_everyone_else_until_released_and_leaves_no_trace(tmp_path):
  wd = tmp_path / "run"
  lock = workdir_lock.acquire(str(wd))
  assert lock.held and (wd / ".lock").is_file()
  # (Never open a lock file your own process holds: closing it would drop the POSIX lock.)
  details = lock.info
  assert (details["host"], details["pid"]) == (HOST, os.getpid())
  # Another process sees it held, by us; this process cannot take it twice either.
  status, line = _ask(wd)
  assert status == 1 and line == f"{wd}: held by {workdir_lock.describe(details)}", line
  with pytest.raises(workdir_lock.WorkdirLocked) as info:
    workdir_lock.acquire(str(wd))
  assert info.value.field == "--workdir" and info.value.holder == details
  assert workdir_lock.holder(str(wd)) == details
  # The probe of the other process did not cost us the lock (a POSIX lock's classic trap).
  assert _ask(wd)[0] == 1
  lock.release()
  assert not wd.exists()  # the lock created the folder and nothing else was written there
  assert workdir_lock.holder(str(wd)) is None
  # A folder that existed before keeps existing; only the lock file goes.
  wd.mkdir()
  assert _ask(wd) == (0, f"{wd}: free")
  (wd / "config.json").write_text("{}")
  with workdir_lock.acquire(str(wd)):
    assert (wd / ".lock").exists()
  assert sorted(os.listdir(wd)) == ["config.json"]
  # Missing parents it made go too; a workdir that is a file is refused.
  with workdir_lock.acquire(str(tmp_path / "a" / "b" / "run")):
    assert (tmp_path / "a" / "b" / "run" / ".lock").exists()
  assert not (tmp_path / "a").exists()
  with pytest.raises(ConfigError, match=r"^--workdir: .*config\.json' is a file, not a directory"):
    workdir_lock.acquire(str(wd / "config.json"))


def test_asking_about_a_missing_folder_or_a_file_says_so_instead_of_free(tmp_path, capsys):
  missing = tmp_path / "no" / "such"
  assert workdir_lock.main([str(missing)]) == 2
  out, err = capsys.readouterr()
  assert out == "" and err.startswith(f"error: {missing}: no such folder; no run has used it")
  assert not missing.exists() and not (tmp_path / "no").exists()  # asking creates nothing
  a_file = tmp_path / "f"
  a_file.write_text("x")
  assert workdir_lock.main([str(a_file)]) == 2
  assert capsys.readouterr().err == f"error: {a_file}: a file, not a folder; pass a run's workdir\n"
  assert workdir_lock.main([str(tmp_path)]) == 0
  assert capsys.readouterr().out == f"{tmp_path}: free\n"


def test_a_sigkilled_holder_leaves_no_lock_and_its_details_are_replaced(tmp_path):
  wd = tmp_path / "run"
  holder = _hold(wd)
  try:
    with pytest.raises(workdir_lock.WorkdirLocked) as info:
      workdir_lock.acquire(str(wd))
    assert info.value.holder["pid"] == holder.pid and info.value.holder["host"] == HOST
    msg = str(info.value)
    assert re.fullmatch(rf"--workdir: '{re.escape(str(wd))}' is in use by another run \(host "
                        rf"{re.escape(HOST)}, pid {holder.pid}, started \d{{4}}-\d\d-\d\d "
                        r"\d\d:\d\d:\d\d UTC\); wait for it to end or stop it, or pass another "
                        r"--workdir", msg), msg
  finally:
    _kill(holder)
  assert (wd / ".lock").exists()  # a kill leaves the file (stale details, no lock)
  with workdir_lock.acquire(str(wd)) as lock:
    assert lock.info["pid"] == os.getpid()
    assert _ask(wd) == (1, f"{wd}: held by {workdir_lock.describe(lock.info)}")


def test_a_filesystem_without_locks_is_one_clear_error_and_locking_can_be_turned_off(
    tmp_path, monkeypatch):
  def no_locks(*_):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(workdir_lock.fcntl, "lockf", no_locks)
  with pytest.raises(ConfigError) as info:
    workdir_lock.acquire(str(tmp_path / "run"))
  msg = str(info.value)
  assert msg.startswith("--workdir: the file system of ") and "cannot lock files" in msg, msg
  assert f"{workdir_lock.ENV_VAR}=off" in msg and "\n" not in msg
  monkeypatch.setenv(workdir_lock.ENV_VAR, "off")
  lock = workdir_lock.acquire(str(tmp_path / "run"))
  assert not lock.held and not (tmp_path / "run" / ".lock").exists()
  lock.release()


# ----------------------------------------------------------------------------- experiments.run


def test_a_second_run_is_refused_while_the_first_lives_and_runs_after_a_sigkill(tmp_path):
  wd = tmp_path / "run"
  first = _hold(wd)  # the first run, as far as the lock is concerned
  try:
    before = snapshot(wd)
    second = subprocess.run(
        [sys.executable, "-m", "experiments.run", "--config=configs/sinusoidal.py:smoke",
         f"--workdir={wd}"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    lines = second.stderr.splitlines()
    assert second.returncode == 2, second.stderr[-3000:]
    assert len(lines) == 1, second.stderr[-3000:]
    assert re.fullmatch(rf"error: --workdir: '{re.escape(str(wd))}' is in use by another run "
                        rf"\(host {re.escape(HOST)}, pid {first.pid}, started [-\d]+ [:\d]+ UTC\); "
                        r"wait for it to end or stop it, or pass another --workdir", lines[0]), lines
    assert snapshot(wd) == before  # nothing written, the holder's details untouched
    assert "run:" not in second.stdout
  finally:
    _kill(first)
  # The killed holder's lock is gone: the next run takes the workdir (what experiments.run
  # does first), and the sweep test below runs whole points under their locks.
  assert _ask(wd) == (0, f"{wd}: free")
  with workdir_lock.acquire(str(wd)) as lock:
    assert lock.held


# ----------------------------------------------------------------------------- sweeps


def _chomsky(tmp_path, seeds=3):
  m = sweeping.load_module(os.path.join(ROOT, "configs", "sweeps", "chomsky.py"))
  c = m.get_config("smoke")
  c.sweep.schemes, c.sweep.tasks, c.sweep.seeds = "sinusoidal", "parity_check", seeds
  c.workdir = str(tmp_path)
  return sweeping.resolve_all(m, c, {"eval.num_buckets": 1, "eval.max_length": 8})


def test_a_sweep_point_is_run_finished_or_running_elsewhere(tmp_path, monkeypatch):
  resolved = _chomsky(tmp_path)
  a, b, c = (cfg for _, cfg in resolved)
  holder = _hold(a.workdir)
  try:
    decision, lock, who = sweeping.claim(a)
    assert (decision, lock) == ("elsewhere", None) and who["pid"] == holder.pid
  finally:
    _kill(holder)
  decision, lock, who = sweeping.claim(b)
  try:
    assert decision == "run" and lock.held and who is None
    assert _ask(b.workdir)[1].endswith(f"pid {os.getpid()}, started {lock.info['started']}")
  finally:
    lock.release()
  # Finished by another worker between the first look and the lock: not run again.
  looks = iter([False, True])
  monkeypatch.setattr(sweeping, "finished", lambda config: next(looks))
  decision, lock, _ = sweeping.claim(c)
  assert (decision, lock) == ("finished", None)
  assert not os.path.exists(c.workdir)  # released, and the folder the lock made is gone
  assert _ask(c.workdir)[0] == 2  # so there is nothing to ask about: "no such folder"


def test_two_sweep_workers_on_one_root_run_every_point_exactly_once(tmp_path):
  root = tmp_path / "sweep"
  args = [sys.executable, "-m", "experiments.sweep", "--config=configs/sweeps/chomsky.py:smoke",
          "--config.sweep.schemes=sinusoidal", "--config.sweep.tasks=parity_check",
          "--config.sweep.seeds=2", "--config.eval.max_length=8", "--config.eval.num_buckets=1",
          f"--root={root}"]
  workers = [subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
  outputs = [w.communicate(timeout=600)[0] for w in workers]
  for w, out in zip(workers, outputs):
    assert w.returncode == 0, out[-3000:]
  names = [f"sinusoidal-parity_check-seed{s}" for s in range(2)]
  ran = [re.findall(r"^sweep \[\d/2\] run: .* -> (\S+)$", out, re.M) for out in outputs]
  # Every point ran once, in one worker; the other passed over it or found it finished.
  assert sorted(os.path.basename(p) for r in ran for p in r) == names, outputs
  for out in outputs:
    assert re.search(r"^sweep: 2 points: \d run, \d skipped \(finished\), ", out, re.M), out
  for name in names:
    wd = root / name
    assert (wd / "DONE").exists() and not (wd / ".lock").exists()
    steps = [json.loads(l)["step"] for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps and len(steps) == len(set(steps)) and steps == sorted(steps), (name, steps)


def test_multi_host_runs_lock_on_process_0_only_and_follow_its_decision(tmp_path, monkeypatch):
  import jax
  wd = tmp_path / "run"
  decided = {}
  monkeypatch.setattr(workdir_lock, "agree", lambda value: decided.setdefault("value", value))
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  lock = workdir_lock.acquire_on_process_0(str(wd))  # process 0 said "taken" (0)
  assert not lock.held and not wd.exists()  # a process other than 0 writes no lock
  decided["value"] = 1  # process 0 was refused: every process stops, naming where to look
  with pytest.raises(workdir_lock.WorkdirLocked, match="process 0 found it locked"):
    workdir_lock.acquire_on_process_0(str(wd))
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  decided.clear()
  with workdir_lock.acquire_on_process_0(str(wd)) as lock:
    assert lock.held and decided == {"value": 0}
