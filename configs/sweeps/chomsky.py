"""Every scheme valid in an encoder × the Chomsky-hierarchy tasks × seeds (Delétang et al. 2023).

Schemes come from ``posenc.encodings.names()`` (those whose ``MODES`` include "encoder") and
tasks from ``posenc.tasks`` (levels R, DCF, CS), so new ones join the sweep by themselves.
Narrow it from the command line, e.g.::

  python -m experiments.sweep --config=configs/sweeps/chomsky.py \
      --config.sweep.schemes=sinusoidal,rope --config.sweep.tasks=parity_check --config.sweep.seeds=2

Presets:

* ``smoke``: the ``smoke`` run preset, 1 seed; seconds per point (tests).
* default: the default CPU model (2 layers, d = 64), 1,000 steps, evaluation to length 40 with
  64 samples per length, 2 seeds; roughly a minute per point on an idle 2-core CPU, so the full
  grid (16 schemes × 15 tasks × 2 seeds = 480 points today) is an overnight run, and a filtered
  one (a few schemes × a few tasks) takes minutes.
* ``paper``: the published protocol (``configs/base.py``'s ``paper``: lengths 1–40, 1M steps,
  evaluation at every length up to 500), 10 seeds × learning rates {1e-4, 3e-4, 5e-4}; for
  accelerators, through a job array (see ``scripts/slurm_sweep.sh``).

The simplest sweep file, a template for new ones: ``get_config`` is the base config
(``configs.sweeps.sweep_config``: a preset's shared settings, seeds, the learning-rate axis),
``get_sweep`` the grid seed × [learning rate] × task × scheme, built from what ``posenc.sweeps``
discovers (format: ``configs/sweeps/__init__.py``). Nothing here imports ``experiments``, which
only reads the file.
"""

from __future__ import annotations

import ml_collections

from configs.sweeps import sweep_config
from posenc import sweeps

_SHARED = {
    "smoke": {"model.causal": False},
    "default": {"model.causal": False, "train.steps": 1000, "train.warmup_steps": 50,
                "eval.max_length": 40, "eval.samples_per_length": 64, "eval.batch_size": 64,
                "eval.num_buckets": 3, "checkpoint.every_steps": 250},
    "paper": {"model.causal": False},
}
_SEEDS = {"smoke": 1, "default": 2, "paper": 10}
_LEARNING_RATES = {"smoke": "", "default": "", "paper": "1e-4,3e-4,5e-4"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  return sweep_config(arg, name="chomsky", shared=_SHARED.get(preset, {}),
                      seeds=_SEEDS.get(preset, 1), learning_rates=_LEARNING_RATES.get(preset, ""))


def get_sweep(config: ml_collections.ConfigDict) -> list[dict]:
  axes = {"seed": range(config.sweep.seeds)}
  if sweeps.learning_rates(config):
    axes["train.learning_rate"] = sweeps.learning_rates(config)
  axes["task.name"] = sweeps.chomsky_tasks(config)
  axes["scheme"] = sweeps.schemes_for("encoder", config)
  return sweeps.grid(axes)
