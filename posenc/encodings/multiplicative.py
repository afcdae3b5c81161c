"""Multiplicative absolute encoding: the position scales the token embedding channel-wise.

Instead of adding ``p_k``, multiply by it element-wise: the "相乘式" (multiplicative)
kind of absolute encoding in Su's survey "让研究人员绞尽脑汁的Transformer位置编码"
(kexue.fm/archives/8130), which suggests ``x_k ⊗ p_k`` as the alternative to ``x_k + p_k``.

* ``variant = "learned"``: ``x_k ⊙ (1 + p_k)``, ``p ∈ R^{n × d}``
  initialised to zero, so the scheme starts as the identity and learns how far
  to depart from it. Rows past training never get a gradient and stay zero: read
  as positions they would make the scheme silently position-free there
  (``x ⊙ (1 + 0) = x``). So, as in :mod:`posenc.encodings.hierarchical`, the
  table has by default exactly ``n = Dims.train_positions`` rows (``max_len = 0``:
  the training bound, input plus answer of the longest training sequence plus the
  offset, or ``positions.max_position`` for randomized positions / random offsets),
  and what a position ``≥ n`` receives is ``fallback``: ``"clamp"`` (default) the
  last trained row, ``1 + p_{n−1}``; ``"error"`` a refusal before any compute,
  naming ``config.encoding.fallback``. An explicit ``max_len`` sets the parameter's
  rows (e.g. 128, the table of runs made before this contract, so that they load
  with ``config.init.from_workdir``) and still only the first ``min(max_len, n)``
  rows are read as positions. With a fixed ``positions.offset``, rows below the
  offset are never trained either. ``results.json``'s ``encoding_report`` records
  ``table_rows``, ``trained_rows`` (those read), ``train_positions`` and
  ``fallback_clamp`` (1: clamp, 0: error).
* ``variant = "sinusoidal"``: ``x_k ⊙ p_k`` with the parameter-free
  :func:`posenc.encodings.sinusoidal.table` (interleaved ``sin``/``cos``).
  Note ``p_0 = [0, 1, 0, 1, …]``: at position 0 the ``sin`` channels are zero.

Either way the map is linear in ``x`` for fixed positions, and diagonal: it
never mixes channels. Position math is float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings import learned, sinusoidal
from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

VARIANTS = ("learned", "sinusoidal")


def apply(x: jax.Array, scale: jax.Array) -> jax.Array:
  """``x ⊙ scale`` with ``scale`` (float32, ``[B|1, L, D]``) cast to ``x``'s dtype."""
  return x * scale.astype(x.dtype)


def learned_scale(table: jax.Array, positions: jax.Array) -> jax.Array:
  """``1 + P[k]`` at ``positions`` (past the end: the last row) -> ``[..., d]``.

  ``table`` is the rows read as positions (the module passes only the trained ones)."""
  return 1.0 + learned.lookup(table, positions)


def sinusoidal_scale(positions: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
  """``p_k = sinusoidal.table(k)`` at ``positions`` -> ``[..., dim]`` float32."""
  return sinusoidal.table(positions, dim, base)


class Encoding(_Base):
  """Multiplies the token embeddings by a per-position, per-channel scale."""

  variant: str = "learned"
  max_len: int = 0  # 0: the training bound (Dims.train_positions)
  fallback: str = "clamp"  # a position past the trained rows: "clamp" (the last one) | "error"
  base: float = 10000.0

  def rows(self) -> int:
    """Rows of the parameter: ``max_len``, or the training bound when ``max_len`` is 0."""
    return learned.trained_table(self.max_len, self.dims.train_positions)[0]

  def basis(self) -> int:
    """``n``: the rows read as positions, those below the training bound."""
    return learned.trained_table(self.max_len, self.dims.train_positions)[1]

  def setup(self):
    if self.variant == "learned":
      # Zero init: 1 + p = 1, the scheme starts as the identity.
      self.table = self.param("table", nn.initializers.zeros,
                              (self.rows(), self.dims.d_model), jnp.float32)

  def check(self, max_position):
    if self.variant not in VARIANTS:
      raise ConfigError("config.encoding.variant",
                        f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
    if self.variant != "learned":
      return
    learned.check_trained_table(self.max_len, self.fallback, max_position,
                                self.dims.train_positions, "the multiplicative table",
                                other_fix=", set --config.encoding.variant=sinusoidal,")

  def report(self, train_positions: int) -> dict:
    """The learned table's rows, the trained rows read, the training bound and the fallback
    (``results.json``); nothing for the parameter-free sinusoidal variant."""
    del train_positions  # the training program's padded bound; Dims has the real one
    if self.variant != "learned":
      return {}
    return learned.table_report(self.rows(), self.basis(), self.dims.train_positions,
                                self.fallback)

  def embed(self, x, positions):
    if self.variant == "learned":
      scale = learned_scale(self.table[:self.basis()], positions)
    else:
      scale = sinusoidal_scale(positions, self.dims.d_model, self.base)
    return apply(x, scale)
