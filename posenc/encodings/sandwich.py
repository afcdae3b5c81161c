"""Sandwich (Chi et al., ACL 2023, "Dissecting Transformer Length Extrapolation via the
Lens of Receptive Field Analysis"): a parameter-free relative bias from sinusoids.

The inner product of two sinusoidal embeddings of width ``d'`` is
``Σ_m cos((i − j)·ω_m)``; Sandwich shifts it to 0 at distance 0 and compresses
it per head like ALiBi's slopes:

  ``b_h(i, j) = (Σ_{m=1}^{d'/2} cos((i − j) / 10000^{2m/d'}) − d'/2) / (h·8/H)``,  ``h = 1..H``.

It is even in ``i − j``, ``0`` at ``i = j`` and ``≤ 0`` elsewhere, and keeps
varying (log-like) beyond the training length. Being even, it is direction-blind in an
encoder: a key ``d`` before the query and a key ``d`` after it get the same bias (only the
sequence's ends break the mirror symmetry). The paper studies causal language models only
and gives no direction-aware form, so none is invented here.

``d'`` (``encoding.dim``) is a hyperparameter independent of
the model width. Note: the sum runs over ``m = 1..d'/2`` as in the paper's
formula (frequencies ``10000^{−2/d'} … 10000^{−1}``), not the ``m = 0..d'/2−1``
of the sinusoidal table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


def bias(distance: jax.Array, dim: int, num_heads: int) -> jax.Array:
  """The Sandwich bias for ``distance = i − j`` ``[..., Lq, Lk]`` -> float32 ``[..., H, Lq, Lk]``."""
  if dim % 2 or dim < 2:
    raise ValueError(f"sandwich needs an even dim' >= 2, got {dim}")
  d = jnp.asarray(distance, jnp.float32)
  m = jnp.arange(1, dim // 2 + 1, dtype=jnp.float32)
  omega = 10000.0 ** (-2.0 * m / dim)  # [d'/2]
  # Σ cos(δω) − d'/2 = −2 Σ sin²(δω/2): the same value without float32 cancellation near δ = 0.
  # Summed one frequency at a time: never materialises [..., Lq, Lk, d'/2].
  unscaled = jax.lax.fori_loop(0, dim // 2, lambda t, acc: acc - 2.0 * jnp.sin(d * omega[t] / 2) ** 2,
                               jnp.zeros_like(d))
  heads = jnp.arange(1, num_heads + 1, dtype=jnp.float32)
  compression = heads * 8.0 / num_heads  # [H]
  return unscaled[..., None, :, :] / compression[:, None, None]


class Encoding(_Base):
  """Adds the Sandwich bias (no parameters) to the logits of every layer."""

  dim: int = 128  # d'

  def check(self, max_position):
    if self.dim < 2 or self.dim % 2:
      raise ConfigError("config.encoding.dim", f"d' must be an even number >= 2, got {self.dim}")

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k, layer
    distance = (q_pos.astype(jnp.float32)[:, :, None]
                - k_pos.astype(jnp.float32)[:, None, :])  # i − j, [B|1, Lq, Lk]
    return bias(distance, self.dim, self.dims.num_heads)
