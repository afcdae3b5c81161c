"""posenc/host_memory.py: big XLA:CPU programs reuse their temporary buffer (no page faults per
call), small ones keep asynchronous dispatch, the opt-out and the late call do nothing, and a
run's results do not depend on any of it.

Each case runs in a fresh Python process: the settings are per process and must be made before
JAX starts its CPU client (this test process's client started long ago).
"""

import json
import os
import subprocess
import sys

import pytest

from configs import sinusoidal
from configs.lm import sinusoidal as lm_sinusoidal
from posenc import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose 77 MiB intermediate (the [4500, 4500] product, read by two reductions) XLA
# keeps in its temporary buffer; prints the state, the async-dispatch setting and minor page
# faults of the median call.
_PROBE = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
from posenc import host_memory
state = host_memory.configure({hint})
import jax, jax.numpy as jnp
def f(a, b):
  p = a @ b
  return jnp.sum(jnp.max(p, axis=0)) + jnp.sum(jnp.min(p, axis=1))
f = jax.jit(f)
a, b = jnp.ones((4500, 8)), jnp.ones((8, 4500))
for _ in range(3):  # the heap settles in two calls (the second may still grow it once)
  f(a, b).block_until_ready()
per_call = []
for _ in range(7):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(a, b).block_until_ready()
  per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
faults = sorted(per_call)[3]  # the median call: one disturbed call (a loaded machine) is not it
print(json.dumps([state, bool(jax.config.values["jax_cpu_enable_async_dispatch"]), faults]))
"""


def _probe(hint: int, malloc: str | None = None):
  env = {k: v for k, v in os.environ.items() if k != "POSENC_MALLOC"}
  if malloc is not None:
    env["POSENC_MALLOC"] = malloc
  out = subprocess.run([sys.executable, "-c", _PROBE.format(root=ROOT, hint=hint)],
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


glibc = pytest.mark.skipif(os.uname().sysname != "Linux" or
                           __import__("platform").libc_ver()[0] != "glibc", reason="glibc only")


@glibc
def test_a_big_program_reuses_its_memory_instead_of_faulting_it_in_every_call():
  big = 2 * host_memory.THRESHOLD_BYTES
  state, is_async, faults = _probe(big)
  assert state == "kept; programs run on the calling thread" and not is_async
  system_state, system_async, system_faults = _probe(big, malloc="system")
  assert system_state == "off: POSENC_MALLOC=system" and system_async
  # glibc's default: the 77 MiB buffer is mapped and zeroed again on every call (~20,000 pages).
  assert system_faults > 15_000, system_faults
  assert faults < system_faults / 10, (faults, system_faults)


@glibc
def test_small_steps_keep_asynchronous_dispatch_and_sync_forces_the_calling_thread():
  state, is_async, _ = _probe(0)
  assert state == "kept; dispatch asynchronous (small steps)" and is_async
  state, is_async, _ = _probe(0, malloc="sync")
  assert state == "kept; programs run on the calling thread" and not is_async


def test_too_late_once_jax_runs_and_the_environment_wins():
  # This process computed with JAX long ago: configure must not touch the dispatch setting.
  import jax
  import jax.numpy as jnp
  jnp.ones(2).block_until_ready()
  saved, host_memory.STATE = host_memory.STATE, None
  try:
    state = host_memory.configure(10 ** 12)
    assert state.startswith("off: JAX's backends had started") or state.startswith("off: not glibc")
    assert jax.config.values["jax_cpu_enable_async_dispatch"]
  finally:
    host_memory.STATE = saved
  env = {k: v for k, v in os.environ.items() if k != "POSENC_MALLOC"}
  env["MALLOC_ARENA_MAX"] = "2"
  out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r}); "
                        "from posenc import host_memory; print(host_memory.configure(10**12))"],
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.stdout.strip() == "off: the environment tunes glibc's malloc", out.stderr[-1000:]


def test_step_size_estimate_sends_only_big_presets_to_the_calling_thread():
  est = {name: host_memory.step_bytes(cfg) for name, cfg in (
      ("smoke", sinusoidal.get_config("smoke")), ("default", sinusoidal.get_config(None)),
      ("paper", sinusoidal.get_config("paper")), ("lm", lm_sinusoidal.get_config(None)))}
  # XLA's temp_size_in_bytes on this CPU: default 21 MiB, paper 423 MiB, LM 180 MiB.
  assert est["smoke"] < est["default"] < host_memory.THRESHOLD_BYTES
  assert 21 / 1.5 < est["default"] / 2 ** 20 < 21 * 1.5
  assert 423 / 1.5 < est["paper"] / 2 ** 20 < 423 * 1.5
  assert 180 / 1.5 < est["lm"] / 2 ** 20 < 180 * 1.5
  bad = sinusoidal.get_config("smoke")
  bad.task.name = "no_such_task"
  assert host_memory.step_bytes_or_zero(bad) == 0  # setup reports the bad name, not this


@glibc
def test_a_run_gives_the_same_results_whatever_the_allocator_and_dispatch(tmp_path):
  results = {}
  for mode in ("system", "sync"):
    env = {**os.environ, "POSENC_MALLOC": mode}
    out = subprocess.run([sys.executable, "-m", "experiments.run",
                          "--config=configs/sinusoidal.py:smoke", f"--workdir={tmp_path / mode}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(tmp_path / mode / "results.json") as f:
      r = json.load(f)
    results[mode] = {k: r[k] for k in ("in_range_score", "out_of_range_score", "per_length")}
  assert results["system"] == results["sync"]
