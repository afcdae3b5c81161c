"""One run: train short, test long, write results.

  python -m experiments.run --config=configs/sinusoidal.py
  python -m experiments.run --config=configs/sinusoidal.py:smoke --config.train.steps=50 --workdir=/tmp/r
  python -m experiments.run --config=configs/sweeps/chomsky.py:paper --sweep_index=17
  python -m experiments.run --config=configs/rope.py:smoke --show_config   # every config field

With ``--sweep_index=N`` the config is a sweep file and the run is its point N (see
experiments/sweeping.py); ``--config.x=y`` overrides win over the point's values, and the
workdir is ``<sweep root>/<point name>`` unless ``--workdir`` names one.

Bad input (an unknown scheme, task, preset or override key; a length a scheme
cannot represent; a workdir that is a file) ends with one line naming the field
and exit status 2, before any compute.

A run holds an exclusive lock on its workdir (``<workdir>/.lock``, see
posenc/workdir_lock.py) from the end of validation to its exit. A second run on a
workdir that a live run holds stops at once, before writing anything, with one line
naming the workdir and the holder (host, pid, start time) and exit status 2. A killed
run's lock dies with it.
"""

from __future__ import annotations

import logging as std_logging
import sys

from absl import flags, logging
from ml_collections import config_flags

from posenc.errors import ConfigError, TrainingDiverged

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/<scheme>.py[:smoke|paper].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: runs/<derived from the config>).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host runs; also automatic "
    "when JAX_COORDINATOR_ADDRESS is set). Only process 0 writes metrics and results.")
_SHOW = flags.DEFINE_bool(
    "show_config", False, "Print every config.* field of this config (file, preset, sweep point "
    "and --config.x=y overrides applied) with its value and meaning, and exit; runs nothing.")
_SWEEP_INDEX = flags.DEFINE_integer(
    "sweep_index", None, "With a sweep config (configs/sweeps/*.py): run its point N, 0-based "
    "(python -m experiments.sweep --config=... --count says how many).")


def sweep_point(config):
  """The run config of ``--sweep_index``'s point (``config`` itself without the flag)."""
  from experiments import sweeping
  index = _SWEEP_INDEX.value
  path = config_flags.get_config_filename(flags.FLAGS["config"])
  if index is None:
    if sweeping.is_sweep_config(config):
      raise ConfigError("--sweep_index", f"{path} is a sweep config; pass --sweep_index=N to run "
                        f"its point N (python -m experiments.sweep --config={path} --count)")
    return config
  if not sweeping.is_sweep_config(config):
    raise ConfigError("--sweep_index", f"{path} is not a sweep config; pass one of "
                      "configs/sweeps/*.py, or drop --sweep_index")
  points = sweeping.points(sweeping.load_module(path), config)
  if not 0 <= index < len(points):
    raise ConfigError("--sweep_index", f"{index} is out of range: this sweep has "
                      f"{sweeping.count(len(points), 'point')}, 0..{len(points) - 1}")
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  resolved = sweeping.resolve(config, points[index], index, overrides)
  print(f"sweep point {index} of {len(points)}: {sweeping.describe(points[index])}", flush=True)
  return resolved


def show_config(config) -> None:
  """``--show_config``: every field with its value and meaning (posenc/config_fields.py)."""
  from posenc import config_fields
  arg = config_flags.get_config_filename(flags.FLAGS["config"])
  arg = arg if ":" in arg else f"{arg}:{config.get('preset', 'default')}"
  print(config_fields.render(config, f"{arg}: every field (set one with --config.<field>=<value>)"))


def main(argv):
  # Bad command lines end with one line and status 2 (absl's UsageError would print the usage).
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])}; every setting is a flag, "
          "e.g. --config.train.steps=100", file=sys.stderr)
    sys.exit(2)
  if _CONFIG.value is None:
    print("error: --config: required, e.g. --config=configs/sinusoidal.py:smoke", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.ERROR)  # orbax and JAX are chatty below ERROR
  # A check failing inside a compiled step (e.g. FLOATER's ODE solver) is also logged, with a
  # traceback, by JAX's callback machinery; train.py reports the error itself as one line.
  std_logging.getLogger("jax._src.callback").setLevel(std_logging.CRITICAL)
  if _SHOW.value:
    try:
      config = sweep_point(_CONFIG.value)
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    if _WORKDIR.value:
      with config.unlocked():
        config.workdir = _WORKDIR.value
    show_config(config)
    return
  # imports JAX; after flag parsing: --help is instant
  from posenc import host_memory, parallel, setup as setup_lib, train, workdir_lock
  distributed = parallel.maybe_initialize_distributed(force=_DISTRIBUTED.value)

  try:
    config = sweep_point(_CONFIG.value)
    if _WORKDIR.value:
      with config.unlocked():
        config.workdir = _WORKDIR.value
    # Before JAX's CPU client starts: big steps reuse their memory (posenc/host_memory.py).
    host_memory.configure(host_memory.step_bytes_or_zero(config))
    if not distributed and config.get("seed_loop", "auto") in ("auto", "shard"):
      parallel.provide_cpu_devices(config.num_seeds)  # seeds side by side on the cores
    # Validate, then lock the workdir for the rest of this process's life (one writer per
    # workdir; multi-host: process 0 locks), then train.
    s = setup_lib.setup(config)
    setup_lib.check_workdir(s)
    with workdir_lock.acquire_on_process_0(s.workdir):
      train.train_and_evaluate(config)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  from experiments import cli
  cli.main_with_clear_errors(main, "experiments.run", "configs/rope.py:smoke")
