"""xpos: see posenc/encodings/xpos.py. Presets as in configs/base.py."""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="xpos")
  c.model.causal = True  # valid only in a causal decoder
  return c
