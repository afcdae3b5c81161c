"""Regular tasks (Chomsky hierarchy level R).

Token meanings, answer conventions and sampling distributions follow the
published code: ``tasks/regular/*.py`` of google-deepmind/randomized_positional_encodings
(identical to those of google-deepmind/neural_networks_chomsky_hierarchy).

Every sampler is native padded (``_sample_padded``): it draws at the static width
``max_length`` and masks what lies past the (possibly traced) ``length``, so one
compiled program serves every length of a bucket.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.tasks import padding
from posenc.tasks.base import Task


class ParityCheck(Task):
  """Is the number of 1s even or odd?

  Tokens: input 0, 1 (bits); output 0 (even count of 1s), 1 (odd). One answer token.
  Official source: ``tasks/regular/parity_check.py``.
  """

  name = "parity_check"
  level = "R"
  input_vocab_size = 2
  output_vocab_size = 2

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    bits = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, 2), length)
    return {"input": bits, "target": jnp.sum(bits, axis=1, keepdims=True) % 2}


class EvenPairs(Task):
  """Is the number of unequal neighbour pairs ("01" and "10") odd?

  Tokens: input 0, 1 (uniform random bits); output 0 (the count of "01" plus
  "10" is even), 1 (odd). One answer token. The answer equals "first bit !=
  last bit"; for ``l = 1`` there are no pairs and the answer is 0.
  Official source: ``tasks/regular/even_pairs.py``.
  """

  name = "even_pairs"
  level = "R"
  input_vocab_size = 2
  output_vocab_size = 2

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    bits = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, 2), length)
    # Pair (i, i + 1) counts when i + 1 < length.
    unequal = (bits[:, 1:] != bits[:, :-1]) & padding.before(length - 1, max_length - 1)
    return {"input": bits, "target": jnp.sum(unequal, axis=1, keepdims=True) % 2}


class ModularArithmetic(Task):
  """Value mod 5 of an expression ``d op d op ... d`` without brackets.

  Tokens: input 0..4 (digits), 5 (+), 6 (-), 7 (*), 8 (blank ``_``); output
  0..4, the value mod 5, evaluated left to right with * binding tighter than
  + and - (e.g. ``1 - 1 - 1 = 4``, ``1 + 2 * 3 = 2``). One answer token.
  Digits (uniform on 0..4) sit at even positions and operators (uniform on
  {+, -, *}) at odd positions, so an expression has odd length.

  Even lengths, following the code (not the paper text, which adds a symbol):
  the official sampler drops one symbol, so for even ``l`` the expression has
  ``l - 1`` tokens. As our inputs must hold exactly ``l`` tokens, the last slot
  then holds the blank token 8, which belongs to the official vocabulary
  (``input_size = modulus + 4``) but is never emitted by its sampler.
  Products are reduced mod 5 exactly (the official ``segment_prod`` works in
  int32 and could overflow on very long runs of *, which is astronomically rare).
  Official source: ``tasks/regular/modular_arithmetic.py`` (modulus 5).
  """

  name = "modular_arithmetic"
  level = "R"
  MODULUS = 5
  PLUS, MINUS, TIMES, BLANK = 5, 6, 7, 8
  input_vocab_size = 9
  output_vocab_size = 5

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    n = length - 1 + length % 2  # expression length, odd
    n_digits = n // 2 + 1
    width = max_length // 2 + 1  # digits of the longest expression
    k_dig, k_op = jax.random.split(rng)
    digits = jax.random.randint(k_dig, (batch_size, width), 0, self.MODULUS)
    ops = self.PLUS + jax.random.randint(k_op, (batch_size, width), 0, 3)
    # Past the expression: "+ 0" terms, which leave the value unchanged.
    digits = jnp.where(padding.before(n_digits, width), digits, 0)
    ops = jnp.where(padding.before(n_digits - 1, width), ops, self.PLUS)
    pos = padding.arange_row(max_length)
    expr = jnp.where(pos % 2 == 0, padding.take(digits, pos // 2), padding.take(ops, pos // 2))
    expr = jnp.where(pos < n, expr, jnp.where(pos < length, self.BLANK, 0))
    return {"input": expr, "target": _evaluate_flat(digits, ops[:, :-1])[:, None]}


def _evaluate_flat(digits: jax.Array, ops: jax.Array) -> jax.Array:
  """Value mod 5 of ``digits[0] ops[0] digits[1] ...``; * binds before + and -.

  A term starts at the first digit and after every + or -; a - negates the
  term's first digit. Products mod 5 use discrete logarithms (2 generates the
  units mod 5: 1, 2, 4, 3 = 2^0, 2^1, 2^2, 2^3) so a term's product is a sum of
  logs mod 4 plus a "has a zero factor" flag: both are segment sums, no loop.
  Shapes: digits [B, N], ops [B, N - 1] -> [B].
  """
  batch, n_digits = digits.shape
  starts = jnp.concatenate(
      [jnp.ones((batch, 1), bool), ops != ModularArithmetic.TIMES], axis=1)             # [B, N]
  negate = jnp.concatenate([jnp.zeros((batch, 1), bool), ops == ModularArithmetic.MINUS], axis=1)
  factors = jnp.where(negate, (-digits) % 5, digits)
  term = jnp.cumsum(starts, axis=1) - 1                                    # [B, N]
  seg = (term + n_digits * jnp.arange(batch)[:, None]).reshape(-1)
  log2 = jnp.array([0, 0, 1, 3, 2])  # discrete log base 2 mod 5 (0 unused)
  n_seg = batch * n_digits
  log_sum = jax.ops.segment_sum(log2[factors].reshape(-1), seg, n_seg)
  zeros = jax.ops.segment_sum((factors == 0).reshape(-1).astype(jnp.int32), seg, n_seg)
  pow2 = jnp.array([1, 2, 4, 3])
  products = jnp.where(zeros > 0, 0, pow2[log_sum % 4]).reshape(batch, n_digits)
  # Segments beyond the last term are empty: no zero factor, log sum 0 -> 1.
  used = jnp.arange(n_digits)[None, :] <= term[:, -1:]
  return jnp.sum(jnp.where(used, products, 0), axis=1) % 5


class CycleNavigation(Task):
  """Final position on a cycle of 5 states after a walk that starts at 0.

  Tokens: input 0 (move -1), 1 (stay), 2 (move +1), uniform; output 0..4,
  the final state ``sum(token - 1) mod 5``. One answer token.
  Official source: ``tasks/regular/cycle_navigation.py``.
  """

  name = "cycle_navigation"
  level = "R"
  CYCLE = 5
  input_vocab_size = 3
  output_vocab_size = 5

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    moves = jax.random.randint(rng, (batch_size, max_length), 0, 3)
    moves = jnp.where(padding.before(length, max_length), moves, 1)  # "stay" past the walk
    final = jnp.sum(moves - 1, axis=1, keepdims=True) % self.CYCLE
    return {"input": moves, "target": final}


TASKS = (EvenPairs, ModularArithmetic, ParityCheck, CycleNavigation)
