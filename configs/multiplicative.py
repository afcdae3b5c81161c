"""multiplicative: see posenc/encodings/multiplicative.py. Presets as in configs/base.py.

``--config.encoding.variant=sinusoidal`` for ``x ⊙ p`` with the sinusoidal table.

Learned variant: ``encoding.max_len = 0`` in every preset, so the table has one row per training
position (input plus answer of the longest training sequence), all of them trained; a position
past them reads the last trained row (``encoding.fallback = "clamp"``; ``"error"`` refuses such
runs). Smoke: 12 rows, evaluation to 20 positions; default: 32 rows, to 128; ``paper``: 80 rows,
to 1,000. A run made with an explicit table (e.g. 128 rows) loads with
``--config.encoding.max_len=128 --config.init.from_workdir=<run>``; only its trained rows are read.
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="multiplicative")
  c.encoding.max_len = 0  # 0: the training bound (Dims.train_positions)
  c.encoding.fallback = "clamp"
  return c
