"""tupe: see posenc/encodings/tupe.py. Presets as in configs/base.py.

Encoder only (the base config's default mode). TUPE-R: ``--config.encoding.relative=True``.
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="tupe")
  # One table row per position up to the longest evaluated sequence (input + answer).
  c.encoding.max_len = 1024 if c.preset == "paper" else 128
  return c
