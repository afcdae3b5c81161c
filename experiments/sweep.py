"""Many runs: the points of a sweep config, run here in order, or counted / printed for a job array.

  python -m experiments.sweep --config=configs/sweeps/chomsky.py:smoke --root=/tmp/sweep
  python -m experiments.sweep --config=configs/sweeps/chomsky.py --count
  python -m experiments.sweep --config=configs/sweeps/chomsky.py:paper --print_commands
  python -m experiments.sweep --config=configs/sweeps/atlas.py --root=experiments/atlas --list
  python -m experiments.sweep --config=configs/sweeps/chomsky.py:smoke --show_config

Run locally, points go one after another in this process (``posenc.train.train_and_evaluate``
per point). A point whose workdir has a ``DONE`` for the same config is skipped without touching
JAX; an interrupted one resumes from its latest checkpoint; so a killed sweep is restarted with
the same command. ``--shard=i/n`` runs every n-th point from the i-th (one share per worker).
Compiled programs are kept in JAX's persistent cache (``<root>/.jax_cache``), so the second
seed of a scheme and task starts without compiling.

Workers sharing a root: start the same command N times (on one machine with many cores, or on
several hosts whose root is shared storage with working file locks); no scheduler is needed.
Each point runs under an exclusive lock on its workdir (posenc/workdir_lock.py), so each worker
takes the next point that is neither finished nor locked and passes over those another worker
holds ("skip (running elsewhere: host, pid, start)"); no point runs twice, and N workers finish
about N times sooner. A worker ends when it has been through the list; a point whose worker was
killed is taken (and resumed from its checkpoint) by the next command started on the root.
See docs/clusters.md.

``--print_commands`` prints one ``python -m experiments.run ... --sweep_index=N`` line per point,
carrying this command's ``--config.*`` overrides and ``--root``, so a job array runs exactly these
points; ``--count`` prints how many there are; ``--list`` prints each point with ``done`` or
``todo`` (finished: see :func:`experiments.sweeping.finished`). Points and their workdirs are explained in
:mod:`experiments.sweeping`; how to write a sweep file (data: it imports nothing from
``experiments``) in :mod:`configs.sweeps`.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from posenc.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sweep file, optionally with a preset: configs/sweeps/<name>.py[:smoke|paper].",
    lock_config=True)
_ROOT = flags.DEFINE_string("root", None, "Folder holding the points' workdirs (default: the "
                            "sweep config's workdir, runs/sweeps/<name>-<preset>).")
_COUNT = flags.DEFINE_bool("count", False, "Print the number of points and exit.")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print one experiments.run command per point.")
_LIST = flags.DEFINE_bool("list", False, "Print each point, whether its workdir holds a finished run "
                          "of its config (done / todo) and the workdir; run nothing.")
_SHARD = flags.DEFINE_string("shard", None, "i/n: run only points i, i+n, i+2n, ... (0 <= i < n).")
_CACHE = flags.DEFINE_string(
    "compilation_cache", "", "JAX's persistent compilation cache folder, shared by the points "
    "(seeds of one scheme and task compile to the same programs). Default: <root>/.jax_cache; "
    "'none' turns it off.")
_SHOW = flags.DEFINE_bool(
    "show_config", False, "Print every config.* field of the sweep's base config (sweep.* included, "
    "--config.x=y overrides applied) with its value and meaning, and exit; runs nothing.")
_STOP = flags.DEFINE_bool("stop_on_error", False, "Stop at the first failed point (default: go on, "
                          "list the failures at the end, exit 1).")


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])}; every setting is a flag, "
          "e.g. --config.sweep.seeds=2", file=sys.stderr)
    sys.exit(2)
  if _CONFIG.value is None:
    print("error: --config: required, e.g. --config=configs/sweeps/chomsky.py:smoke", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.ERROR)  # orbax and JAX are chatty below ERROR
  std_logging.getLogger("jax._src.callback").setLevel(std_logging.CRITICAL)  # as experiments.run
  from experiments import sweeping

  config = _CONFIG.value
  try:
    if not sweeping.is_sweep_config(config):
      raise ConfigError("--config", "is not a sweep config (it has no `sweep` block); "
                        "use one of configs/sweeps/*.py, or experiments.run for one run")
    if _ROOT.value:
      with config.unlocked():
        config.workdir = _ROOT.value
    config_arg = config_flags.get_config_filename(flags.FLAGS["config"])
    if _SHOW.value:
      from posenc import config_fields
      arg = config_arg if ":" in config_arg else f"{config_arg}:{config.preset}"
      print(config_fields.render(config, f"{arg}: every field of the sweep's base config (set one "
                                 "with --config.<field>=<value>; it applies to every point)"))
      return
    shard = sweeping.parse_shard(_SHARD.value)
    module = sweeping.load_module(config_arg)
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    resolved = sweeping.resolve_all(module, config, overrides)  # every point checked first
    if _LIST.value:
      done = 0
      for i, (point, c) in enumerate(resolved):
        finished = sweeping.finished(c)
        done += finished
        print(f"{i} {'done' if finished else 'todo'} {sweeping.describe(point)} -> {c.workdir}")
      print(f"{done} of {sweeping.count(len(resolved), 'point')} finished")
      return
    if _COUNT.value and not _PRINT.value:
      print(len(resolved))
      return
    if _PRINT.value:
      for line in sweeping.commands(config_arg, config.preset, len(resolved), overrides, _ROOT.value):
        print(line)
      return
    # Before JAX's CPU client starts: big steps reuse their memory (posenc/host_memory.py).
    from posenc import host_memory
    host_memory.configure(max(host_memory.step_bytes_or_zero(c) for _, c in resolved))
    seeds = {c.num_seeds for _, c in resolved}
    if len(seeds) == 1 and all(c.get("seed_loop", "auto") in ("auto", "shard") for _, c in resolved):
      from posenc import parallel
      parallel.provide_cpu_devices(seeds.pop())  # seeds side by side on the cores
    problems = sweeping.unrunnable(resolved, sweeping.shard_indices(len(resolved), shard))
    if problems:
      for i, text in problems:
        print(f"error: sweep point {i} ({sweeping.describe(resolved[i][0])}): {text}", file=sys.stderr)
      them = "it" if len(problems) == 1 else "them"
      print(f"error: {sweeping.count(len(problems), 'point')} cannot run; fix {them}, or leave "
            f"{them} out with "
            "--config.sweep.schemes / --config.sweep.tasks", file=sys.stderr)
      sys.exit(2)
    sweeping.enable_compilation_cache(_CACHE.value or os.path.join(config.workdir, ".jax_cache"))
    status = sweeping.run_points(resolved, shard, stop_on_error=_STOP.value,
                                 prune=bool(config.sweep.get("prune_finished", False)))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if status["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  from experiments import cli
  cli.main_with_clear_errors(main, "experiments.sweep", "configs/sweeps/chomsky.py:smoke")
