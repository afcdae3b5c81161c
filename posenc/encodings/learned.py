"""Learned absolute position table (Gehring et al. 2017; BERT; GPT-2).

``x_k + P[k]`` with ``P ∈ R^{max_len × d}`` initialised N(0, 0.02). There is no
row beyond ``max_len``: a run that would need one is refused before it starts,
unless ``fallback = "clamp"`` (every later position reuses the last row).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

FALLBACKS = ("error", "clamp")


def check_table(max_len: int, fallback: str, max_position: int, other_fix: str = "") -> None:
  """Refuses a table of ``max_len`` rows for positions up to ``max_position − 1`` (no fallback)."""
  if fallback not in FALLBACKS:
    raise ConfigError("config.encoding.fallback",
                      f"unknown fallback {fallback!r}; choose one of {FALLBACKS}")
  if max_len < 1:
    raise ConfigError("config.encoding.max_len", f"must be >= 1, got {max_len}")
  if max_position > max_len and fallback == "error":
    raise ConfigError(
        "config.encoding.max_len",
        f"positions up to {max_position - 1} are needed but the learned table has "
        f"{max_len} rows; raise --config.encoding.max_len to at least {max_position}"
        f"{other_fix} or set --config.encoding.fallback=clamp")


def trained_table(max_len: int, train_positions: int) -> tuple[int, int]:
  """``(rows, n)`` of a table that reads only rows training reached (multiplicative, tupe).

  ``rows``: the parameter's rows, ``max_len`` or, when it is 0, the training bound
  ``train_positions`` (``Dims.train_positions``); ``n``: the rows read as positions, those
  below the training bound (all ``rows`` when the bound is unknown, 0). ``learned`` itself
  reads every row of its table (its published behaviour) and does not use this.
  """
  rows = max_len or train_positions
  return rows, (min(rows, train_positions) if train_positions else rows)


def check_trained_table(max_len, fallback: str, max_position: int, train_positions: int,
                        what: str, other_fix: str = "") -> None:
  """Refuses what :func:`trained_table` cannot give positions up to ``max_position − 1``.

  ``fallback = "error"`` refuses positions past the ``n`` trained rows (naming
  ``config.encoding.max_len`` when a longer explicit table would reach them, else
  ``config.encoding.fallback``); ``"clamp"`` gives them row ``n − 1``, so any position is allowed.
  """
  if fallback not in FALLBACKS:
    raise ConfigError("config.encoding.fallback",
                      f"unknown fallback {fallback!r}; choose one of {FALLBACKS} (error: refuse "
                      "positions past the trained rows; clamp: they read the last trained row)")
  if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 0:
    raise ConfigError("config.encoding.max_len",
                      f"must be a non-negative integer (0: the training bound), got {max_len!r}")
  rows, n = trained_table(max_len, train_positions)
  if rows == 0:
    raise ConfigError("config.encoding.max_len", "0 sizes the table to the training positions, "
                      "which this model was not given (Dims.train_positions = 0); set the "
                      "number of rows explicitly")
  if fallback == "clamp" or max_position <= n:
    return
  short = bool(max_len) and (not train_positions or max_len < train_positions)
  if short and (not train_positions or max_position <= train_positions):
    raise ConfigError(
        "config.encoding.max_len",
        f"positions up to {max_position - 1} are needed but {what} has {max_len} rows; raise "
        f"--config.encoding.max_len to at least {max_position}"
        + (" (or 0: the training bound)" if train_positions else "")
        + f"{other_fix} or set --config.encoding.fallback=clamp")
  zero = "with --config.encoding.max_len=0, " if short else ""
  raise ConfigError(
      "config.encoding.fallback",
      f"is 'error' and positions up to {max_position - 1} are needed, but {what} reads "
      + (f"its {max_len} rows, and " if short else "only trained rows, and ")
      + f"training reaches {train_positions} positions (rows past them never get a gradient); "
      f"set --config.encoding.fallback=clamp (positions from {n} on read row {n - 1}), "
      f"{zero}shorten config.eval.max_length until a sequence (input plus answer, plus any "
      f"positions.offset) has at most {train_positions} tokens{other_fix} or {zero}train on "
      f"sequences that reach {max_position} positions (config.task.train_max_length)")


def table_report(rows: int, n: int, train_positions: int, fallback: str) -> dict:
  """``results.json``'s ``encoding_report`` of such a table (float32 scalars): its rows, the
  trained rows read as positions, the training bound, and ``fallback_clamp`` (1: positions
  from ``n`` on read row ``n − 1``; 0: ``error``, runs needing them were refused)."""
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return {"table_rows": f32(rows), "trained_rows": f32(n), "train_positions": f32(train_positions),
          "fallback_clamp": f32(fallback == "clamp")}


def lookup(table, positions):
  """Rows of ``table`` at ``positions``; indices past the end read the last row."""
  return jnp.take(table, jnp.clip(positions, 0, table.shape[0] - 1), axis=0)


class Encoding(_Base):
  """Adds a learned row per position to the token embeddings."""

  max_len: int = 256
  fallback: str = "error"

  def setup(self):
    self.table = self.param("table", nn.initializers.normal(0.02),
                            (self.max_len, self.dims.d_model), jnp.float32)

  def check(self, max_position):
    check_table(self.max_len, self.fallback, max_position)

  def embed(self, x, positions):
    return x + lookup(self.table, positions).astype(x.dtype)
