"""Shared test setup: JAX on CPU, quiet logs, repo root importable, one compilation cache.

Many tests compile the same small programs (the smoke preset's training step and evaluation of a
scheme, in several test files and in the subprocesses some tests start). All of them, in every
pytest-xdist worker and subprocess, share one persistent JAX compilation cache made for this
test session, so each distinct program is compiled once per session. The cache starts empty on
every session (no result can depend on an earlier checkout's programs); the process that made it
removes it at exit. ``POSENC_TEST_JAX_CACHE=off`` turns it off, ``=DIR`` uses (and keeps) DIR.
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tiny programs: XLA's optimisation passes cost more than they save (~2x faster suite). Set in
# the environment too, so the runs tests start as subprocesses compile the same way.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA:CPU's newer fusion emitters (MLIR) compile these small programs ~2x slower than the
# classic LLVM IR emitters, and nearly every test program is compiled, run a few times and
# dropped. Set in the environment, so every worker and subprocess compiles the same way: the
# runs a test compares were all made under these flags.
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_fusion_emitters=false").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import logging  # noqa: E402

logging.set_verbosity(logging.WARNING)
jax.config.update("jax_disable_most_optimizations", True)

_cache = os.environ.get("POSENC_TEST_JAX_CACHE")
if _cache is None:  # the first process of the session (pytest's controller): make the cache
  _cache = os.environ["POSENC_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="posenc-test-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
if _cache != "off":
  # Workers and subprocesses inherit the environment: the same folder, JAX's own settings.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  jax.config.update("jax_compilation_cache_dir", _cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# The longest tests (each a minute or more on 2 loaded cores: subprocess runs, several end-to-end
# runs) start first, so that pytest-xdist's workers do not end with one of them alone on a core
# (longest-first scheduling). Only the order changes; a name that no longer exists is ignored.
_LONGEST_FIRST = (
    "test_benchmark.py::test_benchmark_script_writes_tables_interleaved_medians_seed_speedups_and_buckets",
    "test_scale.py::test_floater_seeds_sharded_without_shard_map_equal_separate_runs",
    "test_scale.py::test_seeds_sharded_over_cpu_devices_equal_separate_runs_and_resume",
    "test_scale.py::test_data_parallel_on_8_devices_equals_one_device",
    "test_scale.py::test_two_processes_form_one_mesh_and_only_process_0_writes",
    "test_sweep.py::test_tiny_local_sweep_runs_skips_finished_points_and_resumes",
    "test_train_buckets.py::test_bucketed_run_resumes_bit_identically",
    "test_accelerator_paths.py::test_vmapped_seeds_equal_separate_runs",
    "test_accelerator_paths.py::test_accelerator_configuration_runs_end_to_end",
    "test_decoding.py::test_greedy_matches_a_plain_generation_loop",
    "test_bad_inputs.py::test_the_command_line_gives_one_line_and_a_status",
    "test_device_report.py::test_cpu_dry_run_reports_speed_and_a_seeded_run",
    "test_criterion.py::test_stops_where_in_range_accuracy_crosses_and_resumes_to_the_same_step",
    "test_criterion.py::test_seeds_in_one_program_each_stop_with_their_single_runs_parameters",
    "test_reliability.py::test_sigkill_at_any_point_then_restart_gives_the_same_bits",
    "test_floater.py::test_gradients_match_finite_differences",
    "test_floater.py::test_warm_start_from_a_sinusoidal_run_end_to_end",
    "test_floater.py::test_training_step_has_no_host_callbacks_and_reports_the_solver",
    "test_floater.py::test_smoke_decoder_with_randomized_positions_layer_input_and_sphere_flow",
)


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = item.nodeid.split("/")[-1].split("[")[0]
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)
  items.sort(key=rank)  # stable: the rest keep their order
