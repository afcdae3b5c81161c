"""transformer_xl: see posenc/encodings/transformer_xl.py. Presets as in configs/base.py."""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="transformer_xl")
  return c
