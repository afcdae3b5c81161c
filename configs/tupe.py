"""tupe: see posenc/encodings/tupe.py. Presets as in configs/base.py.

Encoder only (the base config's default mode). TUPE-R: ``--config.encoding.relative=True``.

``encoding.max_len = 0`` in every preset: the position table has one row per training position
(input plus answer of the longest training sequence), all of them trained; a position past them
reads the last trained row (``encoding.fallback = "clamp"``; ``"error"`` refuses such runs):

* ``smoke``: reverse_string lengths 1–6 -> 12 rows; evaluation reaches 20 positions.
* default: lengths 1–16 -> 32 rows; evaluation reaches 128.
* ``paper``: lengths 1–40 -> 80 rows; evaluation reaches 1,000.

A run made with an explicit table (e.g. 128 rows, 1,024 for ``paper``) loads with
``--config.encoding.max_len=128 --config.init.from_workdir=<run>``; only its trained rows are read.
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="tupe")
  c.encoding.max_len = 0  # 0: the training bound (Dims.train_positions)
  c.encoding.fallback = "clamp"
  return c
