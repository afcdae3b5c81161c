"""dape: see posenc/encodings/dape.py. Presets as in configs/base.py.

DAPE over KERPLE by default (the official code's ``kerple_c`` runs, one KERPLE per layer);
pick the bias it reads with ``--config.encoding.bias=alibi`` or ``fire`` (``fire_c``: LeakyReLU,
threshold starting at half the training positions; ``--config.encoding.fire_threshold=N``
starts it at ``N`` instead), the MLP's width with ``--config.encoding.mlp_width`` (32, as
official). Valid in an encoder (the default presets) and in a causal decoder
(``--config.model.causal=True``).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="dape")
  return c
