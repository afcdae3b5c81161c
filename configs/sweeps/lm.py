"""Every scheme valid in a causal decoder × byte-level language modelling × seeds (Press et al. 2022).

Each point is ``configs/lm/<scheme>.py:<preset>`` (``configs/lm/base.py`` for a scheme without
its own file there): the task ``lm`` (posenc/tasks/lm.py) trains at ``L`` and reports perplexity
at ``L, 2L, ... 16L``; its presets (``smoke`` / default L = 128 on a CPU / ``paper`` L = 256) and
fields are those of ``configs/lm/base.py``. Seeds: 1 / 2 / 3.

Fixed-size position tables that refuse longer inputs (schemes with both ``max_len`` and
``fallback`` options: learned, multiplicative) get ``encoding.max_len`` = the longest evaluated
length, so their points run; rows past ``L`` are never trained, which is what such a model
meets when read beyond its training length.

Until the task exists (``posenc.tasks`` has none of ``posenc.sweeps.LM_TASK_NAMES``),
``get_sweep`` raises a ConfigError saying so.

Format of a sweep file: ``configs/sweeps/__init__.py``; this one adds a per-scheme key to the
grid's points (``encoding.max_len``, where the scheme has it).
"""

from __future__ import annotations

import importlib.util

import ml_collections

from configs.sweeps import sweep_config
from posenc import encodings, sweeps
from posenc.errors import ConfigError

_SEEDS = {"smoke": 1, "default": 2, "paper": 3}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  if sweeps.lm_task() and importlib.util.find_spec("configs.lm") is not None:
    return sweep_config(arg, name="lm", configs="configs.lm", shared={},
                        seeds=_SEEDS.get(preset, 1))
  # The task has not landed: a causal base config, so that the sweep can still be inspected.
  return sweep_config(arg, name="lm", shared={"model.causal": True}, seeds=_SEEDS.get(preset, 1))


def get_sweep(config: ml_collections.ConfigDict) -> list[dict]:
  task = sweeps.lm_task()
  if task is None:
    raise ConfigError("configs/sweeps/lm.py", "the language-modelling task has not landed yet: "
                      f"posenc.tasks has none of {', '.join(sweeps.LM_TASK_NAMES)}; "
                      "use configs/sweeps/chomsky.py or decoder.py meanwhile")
  axes = {"seed": range(config.sweep.seeds)}
  if sweeps.learning_rates(config):
    axes["train.learning_rate"] = sweeps.learning_rates(config)
  axes["task.name"] = [task]
  axes["scheme"] = sweeps.schemes_for("decoder", config)
  points = sweeps.grid(axes)
  longest = _longest_eval_length(config)
  for point in points:
    if {"max_len", "fallback"} <= set(encodings.get(point["scheme"]).options()):
      point["encoding.max_len"] = longest
  return points


def _longest_eval_length(config: ml_collections.ConfigDict) -> int:
  """``L`` times the largest of ``task.eval_multipliers`` (the LM task's evaluation lengths)."""
  multipliers = [int(m) for m in str(config.task.get("eval_multipliers", "16")).split(",")
                 if m.strip()]
  return max(multipliers) * config.task.train_max_length
