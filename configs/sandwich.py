"""sandwich: see posenc/encodings/sandwich.py. Presets as in configs/base.py."""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="sandwich")
  return c
