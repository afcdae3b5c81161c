"""Context-sensitive tasks (Chomsky hierarchy level CS).

Token meanings, answer conventions and sampling distributions follow the
published code: ``tasks/cs/*.py`` of google-deepmind/randomized_positional_encodings
(identical in substance to google-deepmind/neural_networks_chomsky_hierarchy). The
official binary-arithmetic samplers use Python big integers per sample; here numbers
are little-endian bit arrays and the arithmetic (carry propagation, a
carry-lookahead subtractor for the square root) runs vectorised and jitted on the device.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from posenc.tasks.base import Task


class BucketSort(Task):
  """Sort a string over {0..4}.

  Tokens: input 0..4; output 0..4, the input in ascending order.
  ``output_length(l) = l``. Official source: ``tasks/cs/bucket_sort.py`` (``vocab_size=5``).
  """

  name = "bucket_sort"
  level = "CS"
  vocab = 5
  input_vocab_size = 5
  output_vocab_size = 5

  def output_length(self, length: int) -> int:
    return length

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    x = jax.random.randint(rng, (batch_size, length), 0, self.vocab)
    return {"input": x, "target": jnp.sort(x, axis=1)}


class DuplicateString(Task):
  """Write a binary string twice.

  Tokens: input 0, 1 (bits); output 0, 1: ``w w`` for the input ``w``.
  ``output_length(l) = 2 l``. Official source: ``tasks/cs/duplicate_string.py``
  (``vocab_size=2``, ``duplication=2``).
  """

  name = "duplicate_string"
  level = "CS"
  input_vocab_size = 2
  output_vocab_size = 2

  def output_length(self, length: int) -> int:
    return 2 * length

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    bits = jax.random.randint(rng, (batch_size, length), 0, 2)
    return {"input": bits, "target": jnp.concatenate([bits, bits], axis=1)}


class MissingDuplicateString(Task):
  """Find the bit hidden in a duplicated string ``ww``.

  An input of length ``l`` holds ``ww`` with ``|w| = l // 2`` uniform bits; one
  uniformly chosen symbol of ``ww`` is replaced by MISSING, and for odd ``l`` a
  final ODD_PAD token follows. Tokens: input 0, 1 (bits), 2 (MISSING),
  3 (ODD_PAD); output 0, 1 (the hidden bit). One answer token.
  For ``l = 1`` there is no bit to hide: as in the official code the input is
  the token 1 and the answer 1, but here that answer is masked out (never
  scored, never in the loss), as it is an arbitrary placeholder.
  Official source: ``tasks/cs/missing_duplicate_string.py``.
  """

  name = "missing_duplicate_string"
  level = "CS"
  MISSING = 2
  ODD_PAD = 3
  input_vocab_size = 4
  output_vocab_size = 2

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    half = length // 2
    if half == 0:
      return {"input": jnp.ones((batch_size, length), jnp.int32),
              "target": jnp.ones((batch_size, 1), jnp.int32),
              "target_mask": jnp.zeros((batch_size, 1), bool)}
    k_bits, k_idx = jax.random.split(rng)
    w = jax.random.randint(k_bits, (batch_size, half), 0, 2)
    ww = jnp.concatenate([w, w], axis=1)
    idx = jax.random.randint(k_idx, (batch_size,), 0, 2 * half)
    rows = jnp.arange(batch_size)
    target = ww[rows, idx][:, None]
    x = ww.at[rows, idx].set(self.MISSING)
    if length % 2:
      x = jnp.concatenate([x, jnp.full((batch_size, 1), self.ODD_PAD, x.dtype)], axis=1)
    return {"input": x, "target": target}


class OddsFirst(Task):
  """The symbols at odd positions, then those at even positions (0-based).

  Tokens: input 0, 1 (bits); output 0, 1: ``x[1::2]`` followed by ``x[0::2]``
  for 0-based positions (e.g. ``x0 x1 x2 x3 x4 -> x1 x3 x0 x2 x4``).
  ``output_length(l) = l``. This follows the official code; the official
  docstring's prose and examples ("s_1 s_3 s_5 ...", 1-based) put the other
  half first. Official source: ``tasks/cs/odds_first.py`` (``vocab_size=2``).
  """

  name = "odds_first"
  level = "CS"
  input_vocab_size = 2
  output_vocab_size = 2

  def output_length(self, length: int) -> int:
    return length

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    bits = jax.random.randint(rng, (batch_size, length), 0, 2)
    return {"input": bits, "target": jnp.concatenate([bits[:, 1::2], bits[:, ::2]], axis=1)}


# ---------------------------------------------------------------------------
# Little-endian bit-array arithmetic (bits on the last axis, bit 0 first).


def _add_bits(a: jax.Array, b: jax.Array,
              carry_in: jax.Array | int = 0) -> tuple[jax.Array, jax.Array]:
  """``a + b + carry_in`` of little-endian bit arrays [..., W] -> (sum [..., W], carry out [...]).

  Carry-lookahead: the carry into bit ``i + 1`` is the prefix combination of
  (generate, propagate) pairs over bits ``0..i``, an associative scan of depth
  ``log W`` instead of a ``W``-step loop.
  """
  a, b = a.astype(bool), b.astype(bool)
  gen, prop = a & b, a ^ b
  cin = jnp.asarray(carry_in, bool)
  gen = gen.at[..., 0].set(gen[..., 0] | (prop[..., 0] & cin))

  def combine(lo, hi):
    return hi[0] | (hi[1] & lo[0]), hi[1] & lo[1]

  carries, _ = jax.lax.associative_scan(combine, (gen, prop), axis=-1)
  carry_into = jnp.concatenate(
      [jnp.broadcast_to(cin, gen.shape[:-1])[..., None], carries[..., :-1]], axis=-1)
  return (prop ^ carry_into).astype(jnp.int32), carries[..., -1]


def _shift_up(bits: jax.Array, k: int) -> jax.Array:
  """Multiplies little-endian bits [..., W] by ``2**k``, dropping bits beyond ``W``."""
  if k == 0:
    return bits
  pad = jnp.zeros(bits.shape[:-1] + (k,), bits.dtype)
  return jnp.concatenate([pad, bits[..., :-k]], axis=-1)


def _normalise(cols: jax.Array) -> jax.Array:
  """Bits of ``sum_k cols[..., k] 2**k`` for non-negative integer columns [..., W].

  Every column keeps its low bit and passes the rest up one column, until all
  columns are 0 or 1: the value never changes, and the loop ends after about
  ``log2(max column)`` plus the longest carry chain passes (a handful for random
  operands; at most ``W + log2(max column)``). The value must fit in ``W`` bits.
  """
  def carry(c):
    return (c & 1) + _shift_up(c >> 1, 1)

  return jax.lax.while_loop(lambda c: jnp.any(c > 1), carry, cols)


def _bit_length(bits: jax.Array) -> jax.Array:
  """Index of the highest set bit plus one (0 for zero), little-endian [..., W] -> [...]."""
  width = bits.shape[-1]
  nonzero = bits[..., ::-1] != 0
  return jnp.where(jnp.any(nonzero, axis=-1), width - jnp.argmax(nonzero, axis=-1), 0)


def _random_positive(rng: jax.Array, widths: jax.Array, max_width: int) -> jax.Array:
  """Uniform integers on ``1..2**width - 1`` as little-endian bits [B, max_width].

  Exact without big integers or rejection: the top set bit ``k < width`` has
  probability ``2**k / (2**width - 1)`` (a categorical draw), the bits below it
  are uniform, the bits above it are 0. ``widths``: int [B], each >= 1.
  """
  k_top, k_low = jax.random.split(rng)
  pos = jnp.arange(max_width)[None, :]
  logits = jnp.where(pos < widths[:, None], pos * math.log(2.0), -jnp.inf)
  top = jax.random.categorical(k_top, logits, axis=-1)[:, None]
  low = jax.random.randint(k_low, (widths.shape[0], max_width), 0, 2)
  return jnp.where(pos < top, low, (pos == top).astype(jnp.int32))


def _two_operands(rng: jax.Array, batch_size: int, length: int,
                  op_token: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Input ``n op m`` of ``length >= 3`` tokens, as the official binary tasks draw it.

  ``|n|`` is uniform on ``1..length-2`` and ``|m| = length - 1 - |n|``; each number
  is uniform on ``1..2**|.| - 1`` and written little-endian in exactly its
  width (zero-padded at the high end). Returns (input [B, length], n bits, m
  bits), the numbers as little-endian bits [B, length - 1].
  """
  k_len, k_num = jax.random.split(rng)
  width = length - 1
  len_n = jax.random.randint(k_len, (batch_size,), 1, length - 1)
  len_m = width - len_n
  n, m = jnp.split(_random_positive(k_num, jnp.concatenate([len_n, len_m]), width), 2)
  pos = jnp.arange(length)[None, :]
  cut = len_n[:, None]
  m_at = jnp.take_along_axis(m, jnp.clip(pos - cut - 1, 0, width - 1), axis=1)
  x = jnp.where(pos < cut, jnp.pad(n, ((0, 0), (0, 1))),
                jnp.where(pos == cut, op_token, m_at))
  return x, n, m


def _terminated(bits: jax.Array, size: jax.Array, out_len: int,
                termination: int) -> tuple[jax.Array, jax.Array]:
  """Answer ``bits[:size]``, the termination token, then 0s, over ``out_len`` slots.

  Returns (target [B, out_len], mask [B, out_len]) with the mask True up to and
  including the termination token. ``bits`` [B, W], ``size`` [B] <= out_len - 1.
  """
  pos = jnp.arange(out_len)[None, :]
  width = bits.shape[1]
  if width < out_len:
    bits = jnp.pad(bits, ((0, 0), (0, out_len - width)))
  body = jnp.where(pos < size[:, None], bits[:, :out_len], 0)
  target = jnp.where(pos == size[:, None], termination, body)
  return target, pos <= size[:, None]


class BinaryAddition(Task):
  """Add two little-endian binary numbers.

  Input (``l >= 3``): ``n + m``, both little-endian, ``|n|`` uniform on
  ``1..l-2``, ``|m| = l - 1 - |n|``, each number uniform on ``1..2**|.| - 1`` in
  exactly its width (high zeros allowed). Tokens: input 0, 1 (bits), 2 (+).
  Output (``output_length(l) = l + 1``): the sum, little-endian without high
  zeros, then the termination token 2, then 0s as padding; tokens 0, 1 (bits),
  2 (termination). ``target_mask`` is True up to and including the termination
  token. Example: ``001+01101`` (4 + 22) -> ``01011 2 0 0 0``.
  For ``l <= 2`` (as in the official code) the input is one number of ``l``
  little-endian bits, uniform on ``0..2**l - 2`` (so ``l = 1`` always gives
  ``0``), and the answer is that number (``0`` is written ``0``), then the
  termination token; it is scored.
  Official source: ``tasks/cs/binary_addition.py``.
  """

  name = "binary_addition"
  level = "CS"
  PLUS = 2
  TERMINATION = 2
  input_vocab_size = 3
  output_vocab_size = 3

  def output_length(self, length: int) -> int:
    return length + 1

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    out_len = length + 1
    if length <= 2:
      number = jax.random.randint(rng, (batch_size, 1), 0, 2 ** length - 1)
      bits = (number >> jnp.arange(length)[None, :]) & 1
      size = jnp.maximum(_bit_length(bits), 1)
      target, mask = _terminated(bits, size, out_len, self.TERMINATION)
      return {"input": bits, "target": target, "target_mask": mask}
    x, n, m = _two_operands(rng, batch_size, length, self.PLUS)
    total = _normalise(n + m)  # n + m < 2**(l - 1) fits in l - 1 bits
    target, mask = _terminated(total, _bit_length(total), out_len, self.TERMINATION)
    return {"input": x, "target": target, "target_mask": mask}


class BinaryMultiplication(Task):
  """Multiply two little-endian binary numbers.

  Input (``l >= 3``): ``n * m`` drawn exactly as in ``binary_addition``
  (the operator token is also 2). Tokens: input 0, 1 (bits), 2 (*).
  Output (``output_length(l) = l``): the product, little-endian without high
  zeros (at most ``l - 1`` bits), then the termination token 2, then 0s;
  tokens 0, 1 (bits), 2 (termination). ``target_mask`` is True up to and
  including the termination token. Example: ``001*01101`` (4 * 22 = 88) ->
  ``0001101 2 0``.
  For ``l <= 2`` there is no product: as in the official code the input is
  ``l`` bits of a number uniform on ``0..2**l - 2`` and the answer an arbitrary
  placeholder (``2`` for ``l = 1``, ``0 2`` for ``l = 2``), which is masked out
  here (never scored, never in the loss).
  Official source: ``tasks/cs/binary_multiplication.py``.
  """

  name = "binary_multiplication"
  level = "CS"
  TIMES = 2
  TERMINATION = 2
  input_vocab_size = 3
  output_vocab_size = 3

  def output_length(self, length: int) -> int:
    return length

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    if length <= 2:
      number = jax.random.randint(rng, (batch_size, 1), 0, 2 ** length - 1)
      bits = (number >> jnp.arange(length)[None, :]) & 1
      size = jnp.full((batch_size,), length - 1)
      target, _ = _terminated(jnp.zeros_like(bits), size, length, self.TERMINATION)
      return {"input": bits, "target": target,
              "target_mask": jnp.zeros((batch_size, length), bool)}
    x, n, m = _two_operands(rng, batch_size, length, self.TIMES)
    width = length - 1  # the product has at most |n| + |m| = l - 1 bits
    # Column sums c_k = sum_i n_i m_(k-i) (exact in float32: c_k <= l), then carries.
    conv = jax.vmap(lambda a, b: jnp.convolve(a, b, precision=jax.lax.Precision.HIGHEST))
    cols = jnp.round(conv(n.astype(jnp.float32), m.astype(jnp.float32))).astype(jnp.int32)
    product = _normalise(cols[:, :width])
    target, mask = _terminated(product, _bit_length(product), length, self.TERMINATION)
    return {"input": x, "target": target, "target_mask": mask}


class ComputeSqrt(Task):
  """Floor of the square root of a binary number, big-endian in and out.

  Input: a number uniform on ``1..2**l - 1`` written big-endian in exactly
  ``l`` bits (high zeros allowed). Output (``output_length(l) = ceil(l / 2)``):
  ``floor(sqrt(n))`` big-endian, zero-padded at the front to ``ceil(l / 2)``
  bits. Tokens: 0, 1 (bits) in and out. Example: ``100101`` (37) -> ``110``.
  Bit order follows the official code (big-endian both ways), not the paper
  text. Official source: ``tasks/cs/compute_sqrt.py``.

  The root is computed on device by the digit-by-digit (restoring) method:
  two input bits per step, remainder and root as little-endian bit arrays.
  """

  name = "compute_sqrt"
  level = "CS"
  input_vocab_size = 2
  output_vocab_size = 2

  def output_length(self, length: int) -> int:
    return -(-length // 2)

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    n_le = _random_positive(rng, jnp.full((batch_size,), length), length)
    x = n_le[:, ::-1]                                     # big-endian input
    steps = self.output_length(length)
    padded = jnp.pad(x, ((0, 0), (2 * steps - length, 0)))  # even number of bits
    pairs = padded.reshape(batch_size, steps, 2).transpose(1, 0, 2)  # [steps, B, (hi, lo)]
    width = steps + 2  # remainder <= 2 * root < 2**(steps + 1)

    def step(carry, pair):
      rem, root = carry
      # rem = 4 rem + pair; trial = 4 root + 1; the root gains bit (rem >= trial).
      rem = jnp.concatenate([pair[:, ::-1], rem[:, :-2]], axis=1)
      trial = _shift_up(root, 2).at[:, 0].set(1)
      diff, no_borrow = _add_bits(rem, 1 - trial, carry_in=1)   # rem - trial
      rem = jnp.where(no_borrow[:, None], diff, rem)
      root = jnp.concatenate([no_borrow[:, None].astype(jnp.int32), root[:, :-1]], axis=1)
      return (rem, root), None

    zeros = jnp.zeros((batch_size, width), jnp.int32)
    (_, root), _ = jax.lax.scan(step, (zeros, zeros), pairs)
    return {"input": x, "target": root[:, :steps][:, ::-1]}


TASKS = (DuplicateString, MissingDuplicateString, OddsFirst, BinaryAddition,
         BinaryMultiplication, ComputeSqrt, BucketSort)
