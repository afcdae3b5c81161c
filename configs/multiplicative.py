"""multiplicative: see posenc/encodings/multiplicative.py. Presets as in configs/base.py.

``--config.encoding.variant=sinusoidal`` for ``x ⊙ p`` with the sinusoidal table.
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="multiplicative")
  c.encoding.max_len = 1024 if c.preset == "paper" else 128
  return c
