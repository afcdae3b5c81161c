"""Hierarchical decomposition of a learned table (Su, "层次分解位置编码", kexue.fm/archives/7947).

From a table ``P ∈ R^{n×d}`` (e.g. BERT's 512 learned rows) build ``n²``
positions with no new parameters. Write ``k = a·n + b`` (``a = k // n``,
``b = k % n``) and

    u   = (P − α·P[0]) / (1 − α)
    q_k = α·u[a] + (1 − α)·u[b]

so ``q_k = P[k]`` exactly for ``k < n`` (then ``a = 0`` and ``u[0] = P[0]``):
a model trained with the table sees the same encodings in range, and every
position up to ``n² − 1`` gets a distinct row built from two trained ones.
``α = 0.4`` is Su's value; ``α = 0.5`` would make ``(a, b)`` and ``(b, a)``
equal (``q_{a·n+b} − q_{b·n+a} = (2α − 1)(u[a] − u[b])``), so it is refused,
as are ``α ∉ (0, 1)`` (``α = 0`` ignores ``a``; ``α = 1`` divides by zero).

The module's parameter is named and shaped exactly like
:mod:`posenc.encodings.learned`'s (``table``, ``[max_len, d]``), so a trained
``learned`` run loads into it with the warm start::

  python3 -m experiments.run --config=configs/hierarchical.py \\
      --config.init.from_workdir=<learned run> --config.train.steps=0 \\
      --config.eval.max_length=<far beyond the table>

which evaluates that trained model far beyond its table.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


def extend(table: jax.Array, positions: jax.Array, alpha: float = 0.4) -> jax.Array:
  """Rows ``q_k`` of the extension of ``table [n, d]`` at ``positions`` -> ``[..., d]``.

  ``positions`` are integers in ``[0, n²)``; the result has ``table``'s dtype.
  Computed in the algebraically equal form
  ``q_k = P[k % n] + α/(1 − α)·(P[k // n] − P[0])``, which makes ``q_k = P[k]``
  hold bit for bit for ``k < n`` (the correction term is ``P[0] − P[0] = 0``)
  and avoids forming ``u`` for every row.
  """
  if not 0.0 < alpha < 1.0 or alpha == 0.5:
    raise ValueError(f"alpha must be in (0, 1) and not 0.5, got {alpha}")
  n = table.shape[0]
  positions = jnp.asarray(positions, jnp.int32)
  high, low = positions // n, positions % n
  ratio = alpha / (1.0 - alpha)
  coarse = jnp.take(table, high, axis=0, mode="clip") - table[0]
  return jnp.take(table, low, axis=0, mode="clip") + jnp.asarray(ratio, table.dtype) * coarse


def decomposition(table: jax.Array, alpha: float = 0.4) -> jax.Array:
  """``u = (P − α·P[0]) / (1 − α)``: the basis of Su's formula (for reference and tests)."""
  return (table - alpha * table[0]) / (1.0 - alpha)


class Encoding(_Base):
  """Adds ``extend(P, positions, alpha)`` to the token embeddings; ``P`` as in ``learned``."""

  max_len: int = 256
  alpha: float = 0.4

  def setup(self):
    # Same name, shape and initialiser as learned.py's table, so a learned run warm-starts this.
    self.table = self.param("table", nn.initializers.normal(0.02),
                            (self.max_len, self.dims.d_model), jnp.float32)

  def check(self, max_position):
    if self.max_len < 2:
      raise ConfigError("config.encoding.max_len", f"must be >= 2, got {self.max_len}")
    if not 0.0 < self.alpha < 1.0:
      raise ConfigError("config.encoding.alpha",
                        f"must be in (0, 1) (Su uses 0.4), got {self.alpha}")
    if self.alpha == 0.5:
      raise ConfigError("config.encoding.alpha",
                        "0.5 makes positions a·n+b and b·n+a identical; use e.g. 0.4 (Su's value)")
    capacity = self.max_len ** 2
    if max_position > capacity:
      raise ConfigError(
          "config.encoding.max_len",
          f"positions up to {max_position - 1} are needed but a table of {self.max_len} rows "
          f"extends to {capacity} positions (max_len²); shorten config.eval.max_length or "
          f"train with a larger --config.encoding.max_len")

  def embed(self, x, positions):
    return x + extend(self.table, positions, self.alpha).astype(x.dtype)
