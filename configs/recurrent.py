"""recurrent: see posenc/encodings/recurrent.py. Presets as in configs/base.py.

``--config.encoding.form=rnn`` for the GRU in front of the Transformer.
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="recurrent")
  c.encoding.hidden = c.model.d_model  # the step network's tanh layer as wide as the model
  return c
