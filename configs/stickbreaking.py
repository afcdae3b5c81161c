"""stickbreaking: see posenc/encodings/stickbreaking.py. Presets as in configs/base.py.

Stick-breaking attention is valid only in a causal decoder, so every preset sets
``model.causal=True`` (the default preset: reverse_string as ``prompt SEP answer``, train
1–16, test to 64). Options: ``--config.encoding.attend_current=True`` (the query's own key is
the first stick), ``--config.encoding.remainder=False`` (drop the leftover weight instead of
giving it to the query's own value).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="stickbreaking")
  c.model.causal = True  # valid only in a causal decoder
  return c
