"""none: see posenc/encodings/none.py. Presets as in configs/base.py."""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="none")
  c.model.causal = True  # NoPE is valid only in a causal decoder
  return c
