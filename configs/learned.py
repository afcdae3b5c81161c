"""learned: see posenc/encodings/learned.py. Presets as in configs/base.py."""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="learned")
  c.encoding.max_len = 1024 if c.preset == "paper" else 128
  return c
