"""Length ranges shared by training and reporting, with no JAX import.

:func:`top_lengths` is the one rule for "the longest part of the training lengths": the lengths
a run's criterion checks (``posenc.criterion.lengths``) and the ones over which
``experiments.stats`` decides whether a run without a criterion learned its task in range.
"""

from __future__ import annotations

import math


def top_lengths(lo: int, hi: int, fraction: float = 0.25) -> list[int]:
  """The longest ``fraction`` of the lengths ``lo..hi`` (both included): the last ``k`` of the
  ``n = hi − lo + 1`` lengths, ``k = max(1, ceil(n × fraction − 1e-9))`` (at least one; the
  ``1e-9`` keeps a product that float rounding lifts just above an integer from taking one length
  more). E.g. 1–12 → 10–12, 1–5 → 4–5, 1–3 → 3."""
  lo, hi = int(lo), int(hi)
  if hi < lo:
    raise ValueError(f"length range {lo}–{hi} is empty")
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  n = hi - lo + 1
  k = max(1, math.ceil(n * fraction - 1e-9))
  return list(range(hi - k + 1, hi + 1))
