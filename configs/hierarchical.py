"""hierarchical: see posenc/encodings/hierarchical.py. Presets as in configs/base.py.

``max_len`` matches configs/learned.py's for every preset, so a learned run of the same
preset warm-starts this one (``--config.init.from_workdir=<learned run> --config.train.steps=0``).
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="hierarchical")
  c.encoding.max_len = 1024 if c.preset == "paper" else 128
  return c
