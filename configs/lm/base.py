"""Shared settings of byte-level language modelling (task ``lm``, posenc/tasks/lm.py).

A causal pre-LN decoder trains on windows of ``L = task.train_max_length`` bytes of the
Python standard library's sources (or ``--config.task.corpus=<file or folder>``) and is
evaluated at ``L, 2L, 4L, 8L, 16L`` (perplexity and bits per byte, two protocols; see
the task's docstring). Scheme files (``configs/lm/<scheme>.py``) call
``get_config(arg, scheme=...)``.

Presets:

* ``smoke``   — seconds; what the tests run (L = 16, a tiny model; needs a corpus of a
  few kB, e.g. ``--config.task.corpus=<file>``; the default corpus works too).
* default     — L = 128; sized to train in well under 15 minutes on an unloaded 2-core CPU.
* ``paper``   — L = 256 and a GPT-2-small-like width, for accelerators.
"""

from __future__ import annotations

import ml_collections

from configs import base
from posenc.tasks import lm as lm_task


def get_config(arg: str | None = None, *, scheme: str = "sinusoidal",
               **encoding_overrides) -> ml_collections.ConfigDict:
  preset = arg or "default"
  c = base.get_config(preset, scheme=scheme, **encoding_overrides)
  c.task.name = "lm"
  for key, value in lm_task.DEFAULTS.items():
    c.task[key] = value
  c.model.causal = True
  c.model.pre_ln = True
  c.model.dropout = 0.0
  c.model.activation = "gelu"
  c.train.schedule = "cosine"
  c.train.weight_decay = 0.01
  c.train.grad_clip = 1.0
  c.criterion.every = 0  # perplexity has no in-range accuracy to reach: train for train.steps

  if preset == "default":
    length = 128
    # d = 256 with 64-wide heads: on a 2-core CPU, d = 128 (32-wide heads) spent most of the
    # step outside the matmuls (24% of the matmul rate; see README "Speed"), d = 256 ~40%.
    c.model.d_model = 256
    c.model.num_heads = 4
    c.model.num_layers = 3
    c.model.d_ff = 1024
    c.train.steps = 2000
    c.train.batch_size = 16
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 100
    c.train.log_every = 100
    c.checkpoint.every_steps = 500
  elif preset == "smoke":
    length = 16
    c.model.d_model = 16
    c.model.num_heads = 2
    c.model.num_layers = 1
    c.model.d_ff = 32
    c.train.steps = 4
    c.train.batch_size = 4
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 0
    c.task.eval_multipliers = "1,2,4"
    c.task.eval_tokens = 256
    c.task.eval_windows = 4
    c.task.eval_final_tokens = 8
    c.task.eval_batch_tokens = 64
  else:  # paper
    length = 256
    c.model.d_model = 512
    c.model.num_heads = 8
    c.model.num_layers = 6
    c.model.d_ff = 2048
    c.train.steps = 50_000
    c.train.batch_size = 64
    c.train.learning_rate = 6e-4
    c.train.warmup_steps = 1000
    c.task.eval_tokens = 1 << 20
    c.task.eval_windows = 256
    c.task.eval_batch_tokens = 65536
    c.checkpoint.every_steps = 5000
  c.task.train_min_length = length
  c.task.train_max_length = length
  multipliers = lm_task.parse_multipliers(c.task.eval_multipliers)
  c.eval.min_length = length
  c.eval.max_length = length * max(multipliers)
  return c
