"""complex: see posenc/encodings/complex.py. Presets as in configs/base.py."""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="complex")
  return c
