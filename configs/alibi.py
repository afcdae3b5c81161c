"""alibi: see posenc/encodings/alibi.py. Presets as in configs/base.py.

Encoders use Ruoss et al.'s asymmetric bias ``−m|i − j| + (m/2)[j < i]`` in every preset (the
``paper`` protocol's); ``--config.encoding.direction=symmetric`` gives ``−m|i − j|``. A causal
decoder always uses ``−m(i − j)``.
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="alibi")
  return c
