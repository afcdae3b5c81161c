"""A causal decoder on the copy task: the setting of Kazemnejad et al. (NeurIPS 2023).

Train on lengths 1..20, test to 40 (the paper's split), ``prompt SEP answer`` with the
answer teacher-forced. The scheme is NoPE (``none``), the paper's headline; pick another
decoder scheme or task on the command line:

  python -m experiments.run --config=configs/decoder.py
  python -m experiments.run --config=configs/decoder.py:smoke
  python -m experiments.run --config=configs/decoder.py --config.encoding.name=rope \
      --config.task.name=addition

(``--config.encoding.name`` swaps the scheme only when it needs no fields of its own;
otherwise start from ``configs/<scheme>.py`` with ``--config.model.causal=True
--config.task.name=copy --config.task.train_max_length=20 --config.eval.max_length=40``.)
Decoder tasks: copy, addition, addition_reversed (posenc's: the sum least significant digit
first), addition_little_endian (posenc's: operands and sum so), summation_mod_10, sorting, sorting_multi_digit
(``posenc/tasks/decoder_tasks.py``); every Chomsky-hierarchy task also runs in this decoder form.

Presets as in ``configs/base.py``: ``smoke`` (seconds), default (a few minutes on a CPU),
``paper`` (the published lengths on the paper-scale model and optimizer).
"""

from __future__ import annotations

import ml_collections

from configs import base

TRAIN_MAX = 20  # Kazemnejad et al.: train on lengths 1..20
TEST_MAX = 40   # test to 40


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base.get_config(arg, scheme="none")
  c.model.causal = True
  c.task.name = "copy"
  if c.preset != "smoke":
    c.task.train_min_length = 1
    c.task.train_max_length = TRAIN_MAX
    c.eval.min_length = 1
    c.eval.max_length = TEST_MAX
  if c.preset == "default":
    c.model.pre_ln = True
    c.model.num_layers = 3
    c.train.steps = 2000
    c.eval.samples_per_length = 64
    c.eval.batch_size = 64
    c.eval.num_buckets = 2
  return c
