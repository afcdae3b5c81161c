"""conv: see posenc/encodings/conv.py. Presets as in configs/base.py.

Kernel and groups: 16 groups as wav2vec 2.0; a kernel of 15 tokens is wide next to the
training lengths here (wav2vec 2.0's 128 is for sequences of hundreds of frames).
"""

from configs import base

def get_config(arg=None):
  c = base.get_config(arg, scheme="conv")
  c.encoding.kernel_size = 5 if c.preset == "smoke" else 15
  c.encoding.groups = 16
  return c
