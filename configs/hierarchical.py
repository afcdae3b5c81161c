"""hierarchical: see posenc/encodings/hierarchical.py. Presets as in configs/base.py.

``encoding.max_len = 0`` in every preset: the table has one row per training position (the
training bound: input plus answer of the longest training sequence), all of them trained, and
evaluation past it goes through Su's decomposition, up to n² positions:

* ``smoke``: reverse_string lengths 1–6 -> n = 12 rows (144 positions); evaluation needs 20.
* default: lengths 1–16 -> n = 32 rows (1,024 positions); evaluation needs 128.
* ``paper``: lengths 1–40 -> n = 80 rows (6,400 positions); evaluation needs 1,000.

To evaluate a trained ``learned`` run of the same preset far beyond training, give the table
learned's rows so the parameter loads (only the trained ones are decomposed)::

  --config.encoding.max_len=128 (1024 for paper) --config.init.from_workdir=<learned run>
  --config.train.steps=0
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="hierarchical")
  c.encoding.max_len = 0  # 0: the training bound (Dims.train_positions)
  return c
