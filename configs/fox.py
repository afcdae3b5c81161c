"""fox: see posenc/encodings/fox.py. Presets as in configs/base.py.

Forgetting Attention is valid only in a causal decoder, so every preset sets
``model.causal=True`` (the default preset: reverse_string as ``prompt SEP answer``, train
1–16, test to 64). FoX has no options: a per-head forget gate in every layer is the whole
scheme (no other position encoding).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="fox")
  c.model.causal = True  # valid only in a causal decoder
  return c
