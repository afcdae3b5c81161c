"""Every scheme valid in a causal decoder × the tasks in decoder form × seeds (Kazemnejad et al. 2023).

The Chomsky-hierarchy tasks of ``chomsky.py`` and the decoder tasks (level "decoder", discovered:
copy, addition, addition_reversed, summation_mod_10, sorting, sorting_multi_digit), read as ``prompt SEP answer``
by a causal decoder (``model.causal=True``), with the lengths of ``configs/decoder.py`` (train
1–20, test to 40).
Schemes are those whose ``MODES`` include "decoder", discovered, so the causal-only ones (none,
xpos, cope) are in and the encoder-only ones (deberta, tupe) out.

Presets:

* ``smoke``: the ``smoke`` run preset, 1 seed (tests).
* default: the default CPU model, pre-LN as ``configs/decoder.py``, 1,000 steps, evaluation
  to 40 with 64 samples per length, 2 seeds.
* ``paper``: train 1–20, test to 40, on ``configs/base.py``'s ``paper`` model and optimizer,
  10 seeds.

Same shape as ``chomsky.py`` (format: ``configs/sweeps/__init__.py``).
"""

from __future__ import annotations

import ml_collections

from configs.sweeps import sweep_config
from posenc import sweeps

_SHARED = {
    "smoke": {"model.causal": True},
    "default": {"model.causal": True, "model.pre_ln": True, "task.train_max_length": 20,
                "train.steps": 1000, "train.warmup_steps": 50, "eval.max_length": 40,
                "eval.samples_per_length": 64, "eval.batch_size": 64, "eval.num_buckets": 3,
                "checkpoint.every_steps": 250},
    "paper": {"model.causal": True, "task.train_max_length": 20, "eval.max_length": 40},
}
_SEEDS = {"smoke": 1, "default": 2, "paper": 10}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  return sweep_config(arg, name="decoder", shared=_SHARED.get(preset, {}),
                      seeds=_SEEDS.get(preset, 1))


def get_sweep(config: ml_collections.ConfigDict) -> list[dict]:
  axes = {"seed": range(config.sweep.seeds)}
  if sweeps.learning_rates(config):
    axes["train.learning_rate"] = sweeps.learning_rates(config)
  axes["task.name"] = sweeps.tasks_of_levels(config, (*sweeps.CHOMSKY_LEVELS, "decoder"),
                                            "a Chomsky-hierarchy or decoder task")
  axes["scheme"] = sweeps.schemes_for("decoder", config)
  return sweeps.grid(axes)
