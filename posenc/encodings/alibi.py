"""ALiBi (Press et al., ICLR 2022, "Train Short, Test Long"): linear biases, no position embedding.

Head ``h`` adds a bias linear in the distance to the logit of query ``i`` and key
``j`` in every layer; it is added after the ``1/sqrt(d_h)`` content scaling, unscaled.
Three forms (:func:`bias`, ``form=``), with ``m_h`` the head's slope:

* ``"causal"``: ``−m_h·(i − j)``, ALiBi's own bias, for a causal decoder (where
  ``j ≤ i``). The official code's row-constant shortcut (``m_h·j``, which softmax turns
  into ``−m_h·(i − j)``) is only valid under a causal mask; this form is not a shortcut.
* ``"asymmetric"`` (the encoder's default, ``encoding.direction = "asymmetric"``):
  ``−m_h·|i − j| + (m_h/2)·[j < i]``, i.e. ``−m_h·(i − j − 1/2)`` for keys before the
  query, ``−m_h·(j − i)`` for keys after it and ``0`` at ``j = i``. This is the
  non-causal ALiBi of Ruoss et al. (ACL 2023), the protocol of the ``paper`` preset:
  ``google-deepmind/randomized_positional_encodings``, ``models/positional_encodings.py``,
  ``compute_alibi_encodings_biases`` (the lower triangle, keys before the query, gets
  ``+0.5`` before the slopes multiply, "to (arbitrarily) break the symmetry (otherwise,
  the model cannot distinguish left and right)"; ``compute_noisy_alibi_encodings_biases``
  adds the same ``+0.5`` to sampled distances). The reference builds it from
  ``arange`` indices; here it is computed from the explicit positions, so randomized or
  offset positions use their own distances. Keys ``d`` before and ``d`` after the query
  differ by ``m_h/2``.
* ``"symmetric"`` (``encoding.direction = "symmetric"``): ``−m_h·|i − j|``, even in
  ``i − j``: the bias itself cannot tell a key ``d`` before the query from one ``d``
  after it (only the sequence's ends break the mirror symmetry).

A causal decoder always uses ``"causal"``: ``encoding.direction`` only chooses the
encoder's form (under a causal mask the asymmetric form would merely lower every past
key by ``m_h/2`` relative to the query itself, which is not ALiBi).

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
from posenc.errors import ConfigError

FORMS = ("causal", "asymmetric", "symmetric")
DIRECTIONS = ("asymmetric", "symmetric")  # the encoder's choices (encoding.direction)


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


def bias(q_pos: jax.Array, k_pos: jax.Array, num_heads: int, *, form: str) -> jax.Array:
  """The ALiBi term for positions ``q_pos [B|1, Lq]``, ``k_pos [B|1, Lk]`` -> float32 ``[B|1, H, Lq, Lk]``.

  ``form``: ``"causal"`` ``−m_h·(i − j)``; ``"asymmetric"`` ``−m_h·|i − j| + (m_h/2)·[j < i]``
  (Ruoss et al. 2023's encoder form); ``"symmetric"`` ``−m_h·|i − j|`` (see the module
  docstring). Positions are used in float32 (exact below 2^24).
  """
  if form not in FORMS:
    raise ValueError(f"unknown ALiBi form {form!r}; choose one of {', '.join(FORMS)}")
  distance = (jnp.asarray(q_pos, jnp.float32)[:, :, None]
              - jnp.asarray(k_pos, jnp.float32)[:, None, :])  # i − j, [B|1, Lq, Lk]
  if form != "causal":
    # |i − j|, less one half for keys before the query in the asymmetric form.
    before = (distance > 0).astype(jnp.float32)
    distance = jnp.abs(distance) - (0.5 * before if form == "asymmetric" else 0.0)
  m = jnp.asarray(slopes(num_heads))
  return -m[None, :, None, None] * distance[:, None]


class Encoding(_Base):
  """Adds the ALiBi bias to the logits of every layer.

  ``direction`` (encoder only): ``"asymmetric"`` (default; Ruoss et al. 2023's
  ``−m_h·|i − j| + (m_h/2)·[j < i]``) or ``"symmetric"`` (``−m_h·|i − j|``, blind to
  left and right). A causal decoder uses ``−m_h·(i − j)`` whatever ``direction`` says.
  """

  direction: str = "asymmetric"

  def check(self, max_position):
    del max_position
    if self.direction not in DIRECTIONS:
      raise ConfigError("config.encoding.direction",
                        f"unknown {self.direction!r}; choose one of {', '.join(DIRECTIONS)} "
                        "(the encoder's bias; a causal decoder always uses −m·(i − j))")

  def form(self) -> str:
    """The :func:`bias` form this module adds: ``"causal"`` in a decoder, else ``direction``."""
    return "causal" if self.dims.causal else self.direction

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k, layer
    return bias(q_pos, k_pos, self.dims.num_heads, form=self.form())
