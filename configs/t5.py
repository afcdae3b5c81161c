"""t5: see posenc/encodings/t5.py. Presets as in configs/base.py."""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="t5")
  return c
