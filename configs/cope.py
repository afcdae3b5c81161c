"""cope: see posenc/encodings/cope.py. Presets as in configs/base.py."""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="cope")
  c.model.causal = True  # valid only in a causal decoder
  return c
