"""complex: see posenc/encodings/complex.py. Presets as in configs/base.py.

Every preset runs the paper's network: complex-order embeddings read by complex-valued
attention (``encoding.attention="complex"``), with base's model sizes, so the residual
stream has the same width ``d_model`` as every other scheme's: ``d_model/2`` complex
channels (``[Re | Im]``), split over the heads (``d_model/2`` must be a multiple of
``num_heads``: smoke 8 over 2, default 32 over 4, paper 32 over 8). The official code
instead gives each of the two streams the full ``d_model``; for that, double
``--config.model.d_model``.

The earlier form, ``[Re | Im]`` into the ordinary real Transformer (an ablation of the
complex network): ``--config.encoding.attention=real``.
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="complex")
  return c
