"""Scale: seeds in one program (vmapped or mapped), data parallel over devices, several processes."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from posenc import train
from tests import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(workdir):
  return train.load_params(str(workdir))[0]


def _assert_same_params(a, b, rtol=1e-5):
  """Equal up to float noise. The key projection's bias gets a zero gradient (softmax ignores a
  constant per row) whose rounding noise Adam normalises into steps of ~lr: compare it loosely."""
  def check(path, x, y):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    atol = 5e-3 if name.endswith("key/bias") else 1e-6
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=name)
  jax.tree_util.tree_map_with_path(check, a, b)


@pytest.mark.parametrize("seed_loop", ["map", "vmap"])
def test_num_seeds_equals_separate_runs(tmp_path, seed_loop):
  # The seeded run also evaluates in passes of 2 rows; the single runs take their batch of 4 whole.
  both = helpers.config("sinusoidal", num_seeds=2, seed=3, seed_loop=seed_loop,
                        **{"eval.micro_batch": 2})
  both.workdir = str(tmp_path / "both")
  agg = train.train_and_evaluate(both, log=lambda *_: None)
  stacked = _params(tmp_path / "both")
  for k, seed in enumerate((3, 4)):
    one = helpers.config("sinusoidal", seed=seed)
    one.workdir = str(tmp_path / f"one{seed}")
    single = train.train_and_evaluate(one, log=lambda *_: None)
    ref = _params(tmp_path / f"one{seed}")
    _assert_same_params(jax.tree_util.tree_map(lambda a: a[k], stacked), ref)
    per_seed = json.loads((tmp_path / "both" / "seeds" / f"seed{seed}" / "results.json").read_text())
    assert per_seed["seed"] == seed
    lengths = sorted(single["per_length"], key=int)
    assert sorted(per_seed["per_length"], key=int) == lengths
    np.testing.assert_allclose([per_seed["per_length"][l] for l in lengths],
                               [single["per_length"][l] for l in lengths], atol=1e-6)
  assert agg["num_seeds"] == 2 and agg["seeds"] == [3, 4]
  assert len(agg["in_range_score_per_seed"]) == 2
  # collect counts each seed once: the per-seed files, not the aggregate beside them.
  from experiments import collect
  runs = collect.find_runs([str(tmp_path / "both")], log=lambda *_: None)
  assert sorted(r.seed for r in runs) == [3, 4] and all(r.done for r in runs)


_SHARD_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[3])
from posenc import parallel
devices = parallel.provide_cpu_devices(2)  # before JAX starts, as experiments.run does
import jax
jax.config.update("jax_disable_most_optimizations", True)  # as in this suite (conftest)
from absl import logging; logging.set_verbosity(logging.ERROR)
from posenc import train
from tests import helpers
c = helpers.config(sys.argv[4], num_seeds=2, seed=3, seed_loop=sys.argv[5])
auto_loop = train.seed_loop(helpers.config(sys.argv[4], num_seeds=2, seed=3))
c.eval.micro_batch = 2  # evaluation in passes too (the single runs it is compared with: whole)
c.workdir = sys.argv[1]
if int(sys.argv[2]):  # stop after that many steps, then resume to the end (from the checkpoint)
  steps, c.train.steps = c.train.steps, int(sys.argv[2])
  train.train_and_evaluate(c, log=lambda *_: None)
  c.train.steps = steps
lines = []
r = train.train_and_evaluate(c, log=lines.append)
import os
print(json.dumps({"devices": devices, "cpu_devices": jax.device_count(),
                  "xla_flags": os.environ.get("XLA_FLAGS", ""),
                  "loop": train.seed_loop(c), "auto_loop": auto_loop,
                  "recorded_loop": r["timing"].get("seed_loop"), "per_seed": r["in_range_score_per_seed"],
                  "resumed": [l for l in lines if l.startswith("resumed")]}))
"""


def _run_sharded(workdir, steps=0, scheme="sinusoidal", seed_loop="auto"):
  out = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT, str(workdir), str(steps), ROOT, scheme,
                        seed_loop],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _check_seeds_equal_single_runs(tmp_path, whole_dir, scheme, which=(0, 1)):
  """Seeds ``which`` (indices into the run's seeds 3, 4; index 1 ran on the second device)."""
  stacked = _params(whole_dir)
  for k, seed in enumerate((3, 4)):
    if k not in which:
      continue
    one = helpers.config(scheme, seed=seed)
    one.workdir = str(tmp_path / f"one{seed}")
    single = train.train_and_evaluate(one, log=lambda *_: None)
    _assert_same_params(jax.tree_util.tree_map(lambda a: a[k], stacked),
                        _params(tmp_path / f"one{seed}"))
    per_seed = json.loads((whole_dir / "seeds" / f"seed{seed}" / "results.json").read_text())
    lengths = sorted(single["per_length"], key=int)
    np.testing.assert_allclose([per_seed["per_length"][l] for l in lengths],
                               [single["per_length"][l] for l in lengths], atol=1e-6)
  return stacked


def test_seeds_sharded_over_cpu_devices_equal_separate_runs_and_resume(tmp_path):
  """Two seeds on two CPU devices (seed_loop auto -> shard): each seed's parameters and
  scores equal its own single-seed run's, and a run stopped halfway and resumed (sharded
  checkpoint restored onto the seed mesh) ends with the same parameters."""
  whole = _run_sharded(tmp_path / "whole")
  assert whole["devices"] == 2 and whole["cpu_devices"] == 2 and whole["loop"] == "shard"
  # devices sharing loaded cores wait for each other at collectives instead of aborting
  assert "--xla_cpu_collective_call_terminate_timeout_seconds=3600" in whole["xla_flags"]
  stacked = _check_seeds_equal_single_runs(tmp_path, tmp_path / "whole", "sinusoidal")
  steps = helpers.config("sinusoidal").train.steps
  resumed = _run_sharded(tmp_path / "halves", steps=steps // 2)
  assert resumed["resumed"] == [f"resumed from checkpoint at step {steps // 2}"]
  np.testing.assert_allclose(resumed["per_seed"], whole["per_seed"], atol=1e-6)
  jax.tree_util.tree_map(np.testing.assert_array_equal, _params(tmp_path / "halves"), stacked)


def test_floater_seeds_sharded_without_shard_map_equal_separate_runs(tmp_path):
  """FLOATER's ODE gradients cannot run inside shard_map (diffrax #765): asked to shard, its
  seeds take the partitioned form (shard_spmd), with the same per-seed results. ``auto`` maps
  them on one device instead (posenc.seeds.seed_loop: the partitioned solver's collectives
  deadlocked once under load)."""
  whole = _run_sharded(tmp_path / "whole", scheme="floater", seed_loop="shard")
  assert whole["devices"] == 2 and whole["loop"] == "shard_spmd"
  assert whole["recorded_loop"] == "shard_spmd"  # results.json says how the seeds ran
  assert whole["auto_loop"] == "map"
  # the seed on the second device (the first device's seed is checked by the sinusoidal test
  # above; one FLOATER single run is the cost of this test)
  _check_seeds_equal_single_runs(tmp_path, tmp_path / "whole", "floater", which=(1,))


_STOPPED_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[2])
from posenc import parallel
parallel.provide_cpu_devices(2)
import jax
jax.config.update("jax_disable_most_optimizations", True)
from absl import logging; logging.set_verbosity(logging.ERROR)
from posenc import train
from tests import helpers
c = helpers.config("sinusoidal", num_seeds=2, seed_loop="map", **{
    "criterion.every": 2, "criterion.threshold": 0.01, "train.steps": 8})
c.workdir = sys.argv[1]
first = train.train_and_evaluate(c, log=lambda *_: None)
for name in ("results.json", "DONE"):  # as if killed during its evaluation
  os.remove(os.path.join(c.workdir, name))
lines = []
again = train.train_and_evaluate(c, log=lines.append)
print(json.dumps({"devices": jax.device_count(), "first": first["in_range_score_per_seed"],
                  "again": again["in_range_score_per_seed"], "steps": again["steps_trained"],
                  "resumed": [l for l in lines if l.startswith("resumed")]}))
"""


def test_seeds_mapped_over_a_two_device_batch_resume_at_their_criterion_stop(tmp_path):
  """Seeds mapped on one device while the batch splits over two (FLOATER's way on a 2-core
  CPU): a run killed in its evaluation after its seeds stopped at the criterion resumes at that
  step straight into evaluation, with the same scores. (The restored state sat on one device
  while the evaluation program is replicated over both: it failed, until the state was
  replicated before the seeds were frozen from it.)"""
  out = subprocess.run([sys.executable, "-c", _STOPPED_SCRIPT, str(tmp_path / "run"), ROOT],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["devices"] == 2 and got["steps"] == 2
  assert got["resumed"] == ["resumed from checkpoint at step 2"]
  assert got["again"] == got["first"]


def test_provide_cpu_devices_leaves_a_started_jax_alone():
  from posenc import parallel
  jax.numpy.zeros(1).block_until_ready()  # JAX is running in this process
  assert parallel.provide_cpu_devices(1) == 0
  assert parallel.provide_cpu_devices(8) == 0
  assert jax.device_count() == 1
  assert parallel.seed_devices(8) == 1 and parallel.largest_divisor(8, 3) == 2
  assert parallel.largest_divisor(6, 4) == 3 and parallel.largest_divisor(7, 2) == 1


_DP_SCRIPT = r"""
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", int(sys.argv[1]))
sys.path.insert(0, sys.argv[3])
from absl import logging; logging.set_verbosity(logging.ERROR)
from posenc import train
from tests import helpers
# On 2 devices the sharded evaluation batch also runs in passes of 2 rows.
c = helpers.config("sinusoidal", **{"train.batch_size": 8, "eval.batch_size": 8,
                                    "eval.samples_per_length": 8,
                                    "eval.micro_batch": 2 if int(sys.argv[1]) > 1 else 0})
c.workdir = sys.argv[2]
r = train.train_and_evaluate(c, log=lambda *_: None)
print(json.dumps({"devices": jax.device_count(), "per_length": r["per_length"]}))
"""


def _run_dp(devices, workdir):
  out = subprocess.run([sys.executable, "-c", _DP_SCRIPT, str(devices), str(workdir), ROOT],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_data_parallel_on_8_devices_equals_one_device(tmp_path):
  one = _run_dp(1, tmp_path / "one")
  eight = _run_dp(8, tmp_path / "eight")
  assert one["devices"] == 1 and eight["devices"] == 8
  a, b = _params(tmp_path / "one"), _params(tmp_path / "eight")
  _assert_same_params(a, b, rtol=2e-5)
  lengths = sorted(one["per_length"], key=int)
  np.testing.assert_allclose([one["per_length"][l] for l in lengths],
                             [eight["per_length"][l] for l in lengths], atol=1e-6)


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_processes_form_one_mesh_and_only_process_0_writes(tmp_path):
  wd = tmp_path / "mp"
  port = _free_port()
  procs = []
  for pid in (0, 1):
    env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(pid), "JAX_PLATFORMS": "cpu"}
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.run", "--config=configs/sinusoidal.py:smoke",
         f"--workdir={wd}", "--distributed"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert all("2 processes, 2 devices in one mesh" in out for out in outs)
  assert "done:" in outs[0]
  results = json.loads((wd / "results.json").read_text())
  assert results["steps"] == 4 and (wd / "DONE").exists()
  single = helpers.config("sinusoidal")
  single.workdir = str(tmp_path / "single")
  train.train_and_evaluate(single, log=lambda *_: None)
  _assert_same_params(_params(wd), _params(tmp_path / "single"), rtol=2e-5)


@pytest.mark.parametrize("how", ["map", "shard"])
def test_seeded_initialisation_is_each_single_runs_bit_for_bit(how):
  """A run of S seeds starts seed k from exactly the state a single run with seed + k starts from
  (seed by seed, op by op as a single run initialises), placed where the seeded step expects it
  (the sharded runs above train from it)."""
  from posenc import parallel, seeds
  s = train.setup(helpers.config("t5"))
  keys = seeds.root_keys(5, 3)
  init = lambda k: train.init_state(s, k)
  stacked = seeds.seed_by_seed(init, 3, how)(keys["init"])
  for k in range(3):
    single = init(seeds.root_keys(5 + k)["init"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[k], b), stacked, single)
  leaf = jax.tree_util.tree_leaves(stacked)[0]
  if how == "shard":
    assert leaf.sharding.mesh == parallel.seed_mesh(3)
    assert leaf.sharding.spec == jax.sharding.PartitionSpec(parallel.SEED_AXIS)
