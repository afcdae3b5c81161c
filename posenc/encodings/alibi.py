"""ALiBi (Press et al., ICLR 2022, "Train Short, Test Long"): linear biases, no position embedding.

Head ``h`` adds ``−m_h·(i − j)`` to the logit of query ``i`` and key ``j`` in
every layer (a causal decoder, where ``j ≤ i``). An encoder needs the symmetric
``−m_h·|i − j|``: the official code's row-constant shortcut (``m_h·j``, which
softmax turns into ``−m_h·(i − j)``) is only valid under a causal mask.

Slopes (:func:`slopes`), the official rule (``ofirpress/attention_with_linear_biases``,
``get_slopes``): for ``H`` a power of two the geometric sequence
``m_h = 2^(−8h/H)``, ``h = 1..H``; otherwise, with ``H₀`` the largest power of
two below ``H``, the ``H₀`` slopes of ``H₀`` heads followed by the first
``H − H₀`` odd-indexed slopes of ``2H₀`` heads (``2^(−8(2k+1)/(2H₀))``,
``k = 0, 1, …``), i.e. every other slope of the doubled count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from posenc.encodings.base import Encoding as _Base


def _power_of_two_slopes(n: int) -> list[float]:
  return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]


def slopes(num_heads: int) -> np.ndarray:
  """The ``num_heads`` head slopes ``m_h`` (float32, see the module docstring)."""
  if num_heads < 1:
    raise ValueError(f"num_heads must be >= 1, got {num_heads}")
  lower = 1 << (num_heads.bit_length() - 1)  # largest power of two <= num_heads
  out = _power_of_two_slopes(lower)
  # The doubled count's odd-indexed slopes interleave with ours: 2^(−8(2k+1)/(2·lower)).
  out += [2.0 ** (-8.0 * (2 * k + 1) / (2 * lower)) for k in range(num_heads - lower)]
  return np.asarray(out, np.float32)


def bias(q_pos: jax.Array, k_pos: jax.Array, num_heads: int, *, symmetric: bool) -> jax.Array:
  """``−m_h·(i − j)`` (or ``−m_h·|i − j|`` when ``symmetric``) for positions ``[B|1, Lq]``, ``[B|1, Lk]``.

  Returns float32 ``[B|1, H, Lq, Lk]``. Positions are used in float32 (exact
  below 2^24).
  """
  distance = (jnp.asarray(q_pos, jnp.float32)[:, :, None]
              - jnp.asarray(k_pos, jnp.float32)[:, None, :])  # i − j, [B|1, Lq, Lk]
  if symmetric:
    distance = jnp.abs(distance)
  m = jnp.asarray(slopes(num_heads))
  return -m[None, :, None, None] * distance[:, None]


class Encoding(_Base):
  """Adds the ALiBi bias to the logits of every layer (symmetric in an encoder)."""

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k, layer
    return bias(q_pos, k_pos, self.dims.num_heads, symmetric=not self.dims.causal)
