"""NoPE: no position encoding at all (Kazemnejad et al., NeurIPS 2023).

A causal decoder can still infer positions from the causal mask. An encoder
cannot: without positions self-attention is permutation-equivariant (a bag of
words), so this scheme refuses the encoder mode.
"""

from __future__ import annotations

from posenc.encodings.base import Encoding as _Base


class Encoding(_Base):
  """Defines no hook: the Transformer runs without position information."""

  MODES = ("decoder",)
  MODE_REASON = "an encoder without positions is permutation-equivariant, a bag of words"
