"""deberta: see posenc/encodings/deberta.py. Presets as in configs/base.py.

Encoder only (the base config's default mode)."""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="deberta")
  return c
