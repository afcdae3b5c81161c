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

Which rows are "trained": a row gets a gradient only when a real training token
sits at its position (padding is masked). So the table has, by default, exactly
``n = Dims.train_positions`` rows (``max_len = 0``): the training bound, i.e.
``input + answer`` tokens of the longest training sequence, plus the offset, or
``positions.max_position`` for randomized positions / random offsets. Positions
``k < n`` read ``P[k]``; every position from ``n`` to ``n² − 1`` goes through the
decomposition; a run that needs a position ``≥ n²`` is refused before any compute.
(A table longer than the training bound, as ``learned``'s 128 rows in the default
preset, would give evaluation positions past training rows still at their
N(0, 0.02) initialisation.) With a fixed ``positions.offset``, rows below the offset
are never trained either, and the decomposition reads them; use randomized
positions or a random offset if that matters.

The parameter is named and initialised like :mod:`posenc.encodings.learned`'s
(``table``, N(0, 0.02)). An explicit ``max_len`` sets its rows (e.g. 128, the rows
of a default-preset ``learned`` run) so that a trained ``learned`` run loads into it
with the warm start::

  python3 -m experiments.run --config=configs/hierarchical.py \\
      --config.encoding.max_len=128 \\
      --config.init.from_workdir=<learned run> --config.train.steps=0 \\
      --config.eval.max_length=<far beyond training>

and still only the first ``min(max_len, n)`` rows (those training reached, when the
task and position settings match the learned run's) form the basis of the
decomposition: rows past the training bound are never read.
"""

from __future__ import annotations

import math

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
  """Adds ``extend(P[:n], positions, alpha)`` to the token embeddings (``n``: :meth:`basis`).

  ``max_len``: rows of the table ``P``; 0 (the default) sizes it to the training bound
  ``Dims.train_positions``, so that every row is trained. ``alpha``: Su's α.
  """

  max_len: int = 0
  alpha: float = 0.4

  def rows(self) -> int:
    """Rows of the parameter: ``max_len``, or the training bound when ``max_len`` is 0."""
    return self.max_len or self.dims.train_positions

  def basis(self) -> int:
    """``n``: the rows that form the decomposition, those below the training bound."""
    trained = self.dims.train_positions
    return min(self.rows(), trained) if trained else self.rows()

  def setup(self):
    # Same name and initialiser as learned.py's table, so a learned run warm-starts this.
    self.table = self.param("table", nn.initializers.normal(0.02),
                            (self.rows(), self.dims.d_model), jnp.float32)

  def check(self, max_position):
    if not isinstance(self.max_len, int) or isinstance(self.max_len, bool) or self.max_len < 0:
      raise ConfigError("config.encoding.max_len",
                        f"must be a non-negative integer (0: the training bound), got {self.max_len!r}")
    if not 0.0 < self.alpha < 1.0:
      raise ConfigError("config.encoding.alpha",
                        f"must be in (0, 1) (Su uses 0.4), got {self.alpha}")
    if self.alpha == 0.5:
      raise ConfigError("config.encoding.alpha",
                        "0.5 makes positions a·n+b and b·n+a identical; use e.g. 0.4 (Su's value)")
    trained = self.dims.train_positions
    if self.rows() == 0:
      raise ConfigError("config.encoding.max_len", "0 sizes the table to the training positions, "
                        "which this model was not given (Dims.train_positions = 0); set the "
                        "number of rows explicitly")
    n = self.basis()
    explicit = bool(self.max_len) and (not trained or self.max_len < trained)
    if n < 2:
      if explicit:
        raise ConfigError("config.encoding.max_len", f"must be >= 2, got {self.max_len}")
      raise ConfigError("config.task.train_max_length",
                        f"training reaches {trained} position(s); the decomposition needs at "
                        "least 2 trained rows: train on longer sequences")
    capacity = n * n
    if max_position <= capacity:
      return
    need = math.isqrt(max_position - 1) + 1  # the fewest rows whose square covers max_position
    if explicit and (not trained or need <= trained):
      raise ConfigError(
          "config.encoding.max_len",
          f"positions up to {max_position - 1} are needed but a table of {n} rows extends to "
          f"{capacity} positions (n²); set --config.encoding.max_len to at least {need}"
          + (f" (or 0: the {trained} training positions, {trained * trained} in all)"
             if trained else "") + " or shorten config.eval.max_length")
    # Here the training bound itself is too small (trained > 0: rows() == 0 was refused above).
    most = trained * trained
    raise ConfigError(
        "config.eval.max_length",
        f"positions up to {max_position - 1} are needed but n trained rows extend to n² "
        f"positions and training reaches only n = {trained} positions ({most} in all); shorten "
        f"config.eval.max_length until a sequence (input plus answer, plus any positions.offset) "
        f"has at most {most} tokens"
        + (" with --config.encoding.max_len=0" if explicit else "")
        + f", or train on sequences that reach at least {need} positions "
        "(config.task.train_max_length)")

  def embed(self, x, positions):
    n = self.basis()
    return x + extend(self.table[:n], positions, self.alpha).astype(x.dtype)
