"""t5: see posenc/encodings/t5.py. Presets as in configs/base.py.

Logits are ``q·k/sqrt(d_h) + b`` in every preset; ``--config.encoding.qk_scaling=none`` gives
T5's unscaled ``q·k + b`` (see the scheme's docstring for why the default scales).
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="t5")
  return c
