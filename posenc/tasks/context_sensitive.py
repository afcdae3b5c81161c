"""Context-sensitive tasks (Chomsky hierarchy level CS).

Token meanings, answer conventions and sampling distributions follow the
published code: ``tasks/cs/*.py`` of google-deepmind/randomized_positional_encodings
(identical in substance to google-deepmind/neural_networks_chomsky_hierarchy). The
official binary-arithmetic samplers use Python big integers per sample; here numbers
are little-endian bit arrays and the arithmetic (carry propagation, a
carry-lookahead subtractor for the square root) runs vectorised and jitted on the device.
Every sampler is native padded (``_sample_padded``): it draws at the static width
``max_length`` and masks what lies past the (possibly traced) ``length``, so one
compiled program serves every length of a bucket.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from posenc.tasks import padding
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

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    x = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, self.vocab), length)
    inside = padding.before(length, max_length)
    ordered = jnp.sort(jnp.where(inside, x, self.vocab), axis=1)  # padding sorts last
    return {"input": x, "target": jnp.where(inside, ordered, 0)}


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

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    bits = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, 2), length)
    target = padding.take(bits, padding.arange_row(2 * max_length) % length)
    return {"input": bits, "target": padding.zero_past(target, 2 * length)}


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

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    half = length // 2
    k_bits, k_idx = jax.random.split(rng)
    w = jax.random.randint(k_bits, (batch_size, max(max_length // 2, 1)), 0, 2)
    pos = padding.arange_row(max_length)
    ww = padding.take(w, pos % jnp.maximum(half, 1))                      # [B, M]
    idx = jax.random.randint(k_idx, (batch_size, 1), 0, jnp.maximum(2 * half, 1))
    target = padding.take(ww, idx)
    x = jnp.where(pos == idx, self.MISSING, ww)
    x = jnp.where(pos < 2 * half, x, jnp.where(pos < length, self.ODD_PAD, 0))
    # length 1: no bit to hide; the official input 1 and answer 1, masked out.
    fits = jnp.asarray(half > 0)
    return {"input": jnp.where(fits, x, padding.before(length, max_length).astype(jnp.int32)),
            "target": jnp.where(fits, target, 1),
            "target_mask": jnp.broadcast_to(fits, (batch_size, 1))}


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

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    bits = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, 2), length)
    j = padding.arange_row(max_length)
    n_odd = length // 2
    target = padding.take(bits, jnp.where(j < n_odd, 2 * j + 1, 2 * (j - n_odd)))
    return {"input": bits, "target": padding.zero_past(target, length)}


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


def _two_operands(rng: jax.Array, batch_size: int, length, max_length: int,
                  op_token: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Input ``n op m`` of ``length >= 3`` tokens, as the official binary tasks draw it.

  ``|n|`` is uniform on ``1..length-2`` and ``|m| = length - 1 - |n|``; each number
  is uniform on ``1..2**|.| - 1`` and written little-endian in exactly its
  width (zero-padded at the high end). ``length`` may be traced (a stand-in
  ``n op m`` of 3 tokens is drawn when it is below 3). Returns (input
  [B, max_length], 0 past ``length``; n bits, m bits), the numbers as
  little-endian bits [B, W] with ``W = max(max_length - 1, 2)``.
  """
  k_len, k_num = jax.random.split(rng)
  width = max(max_length - 1, 2)
  length = jnp.maximum(length, 3)
  len_n = jax.random.randint(k_len, (batch_size,), 1, length - 1)
  len_m = length - 1 - len_n
  n, m = jnp.split(_random_positive(k_num, jnp.concatenate([len_n, len_m]), width), 2)
  pos = padding.arange_row(max_length)
  cut = len_n[:, None]
  x = jnp.where(pos < cut, padding.take(n, pos),
                jnp.where(pos == cut, op_token, padding.take(m, pos - cut - 1)))
  return padding.zero_past(x, length), n, m


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

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    out_len = max_length + 1
    k_short, k_long = jax.random.split(rng)
    # length <= 2: one number of `length` bits, uniform on 0..2**length - 2.
    number = jax.random.randint(k_short, (batch_size, 1), 0,
                                jnp.left_shift(1, jnp.clip(length, 1, 2)) - 1)
    bits = padding.zero_past((number >> padding.arange_row(max_length)) & 1, length)
    short_t, short_m = _terminated(bits, jnp.maximum(_bit_length(bits), 1), out_len,
                                   self.TERMINATION)
    # length >= 3: n + m.
    x, n, m = _two_operands(k_long, batch_size, length, max_length, self.PLUS)
    total = _normalise(n + m)  # n + m < 2**(l - 1) fits in l - 1 bits
    long_t, long_m = _terminated(total, _bit_length(total), out_len, self.TERMINATION)
    short = jnp.asarray(length <= 2)
    return {"input": jnp.where(short, bits, x), "target": jnp.where(short, short_t, long_t),
            "target_mask": jnp.where(short, short_m, long_m)}


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

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    k_short, k_long = jax.random.split(rng)
    # length <= 2: `length` bits of a number uniform on 0..2**length - 2; the answer is
    # the official placeholder (zeros, then termination at length - 1), masked out.
    number = jax.random.randint(k_short, (batch_size, 1), 0,
                                jnp.left_shift(1, jnp.clip(length, 1, 2)) - 1)
    bits = padding.zero_past((number >> padding.arange_row(max_length)) & 1, length)
    short_t = jnp.where(padding.arange_row(max_length) == length - 1, self.TERMINATION, 0)
    # length >= 3: n * m.
    x, n, m = _two_operands(k_long, batch_size, length, max_length, self.TIMES)
    width = n.shape[1]  # the product has at most |n| + |m| = l - 1 <= width bits
    # Column sums c_k = sum_i n_i m_(k-i) (exact in float32: c_k <= l), then carries.
    conv = jax.vmap(lambda a, b: jnp.convolve(a, b, precision=jax.lax.Precision.HIGHEST))
    cols = jnp.round(conv(n.astype(jnp.float32), m.astype(jnp.float32))).astype(jnp.int32)
    product = _normalise(cols[:, :width])
    long_t, long_m = _terminated(product, _bit_length(product), max_length, self.TERMINATION)
    short = jnp.asarray(length <= 2)
    return {"input": jnp.where(short, bits, x),
            "target": jnp.where(short, short_t, long_t),
            "target_mask": jnp.where(short, False, long_m)}


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

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    n_le = _random_positive(rng, jnp.full((batch_size,), length), max_length)  # 0 past length
    pos = padding.arange_row(max_length)
    x = padding.zero_past(padding.take(n_le, length - 1 - pos), length)  # big-endian input
    # The root over a static number of digit pairs: leading zero pairs add leading 0s.
    steps = self.output_length(max_length)
    padded = jnp.pad(n_le, ((0, 0), (0, 2 * steps - max_length)))[:, ::-1]  # big-endian
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
    # The answer: the root big-endian in ceil(length / 2) bits.
    out = self.output_length(length)
    target = padding.take(root[:, :steps], out - 1 - padding.arange_row(steps))
    return {"input": x, "target": padding.zero_past(target, out)}


TASKS = (DuplicateString, MissingDuplicateString, OddsFirst, BinaryAddition,
         BinaryMultiplication, ComputeSqrt, BucketSort)
