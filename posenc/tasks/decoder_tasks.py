"""Decoder tasks of Kazemnejad et al. (NeurIPS 2023), "The Impact of Positional Encoding
on Length Generalization in Transformers": copy, addition, summation mod 10, sorting
(single-token and multi-digit).

In decoder form (``--config.model.causal=True``) a sample is read as ``prompt SEP
answer`` and the answer is teacher-forced (``posenc.data.layout``); the tasks also
run in the encoder-transducer form, like every task.

Conventions follow the official dataset builders (McGill-NLP/length-generalization,
``scripts/dataset_builders/make_{copy,addition,sum,sort}_dataset.py``), with the
natural-language wrappers of its T5 prompts ("Copy: …", "Compute … ?", "The answer is
… .") left out: tokens here are the task's symbols only. The official length of an
instance is its number of items (tokens to copy or sort, digits to sum); here, as for
every task of posenc, ``length`` is the number of input tokens, which is the same
thing for copy, summation and single-token sorting. For addition the official
categories are the two operands' digit counts ("a-by-b"); here the input ``a + b`` has
``length`` tokens in all (see :class:`Addition`). For multi-digit sorting the official
category is the count of numbers; here the numbers and their separators fill ``length``
tokens (see :class:`SortingMultiDigit`). Training lengths 1–20 and test lengths to 40,
as in the paper, are set in ``configs/decoder.py``.

Two tasks are posenc's own, not the paper's: ``addition_reversed`` (:class:`AdditionReversed`),
the same prompts as ``addition`` with the sum written least significant digit first, and
``addition_little_endian`` (:class:`AdditionLittleEndian`), the operands written that way too.

``level`` is ``"decoder"`` (not a Chomsky-hierarchy level), so these tasks do not join
the Chomsky-hierarchy sweeps by themselves.

All samplers are native padded: they draw at the static ``max_length`` and mask what
lies past the (possibly traced) ``length``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.tasks import padding
from posenc.tasks.base import Task


class Copy(Task):
  """Copy a sequence of tokens.

  Tokens: input 0..99, uniform (the official ``copy_multi_char`` draws from 100
  single-token words); output 0..99, the input unchanged. ``output_length(l) = l``.
  Official source: ``make_copy_dataset.py`` (``generate_copy_task_data_copy_multi_char``).
  """

  name = "copy"
  level = "decoder"
  VOCAB = 100
  input_vocab_size = VOCAB
  output_vocab_size = VOCAB

  def output_length(self, length):
    return length

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    x = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, self.VOCAB),
                          length)
    return {"input": x, "target": x}


class SummationMod10(Task):
  """The sum of a sequence of digits, modulo 10.

  Tokens: input 1..9 (the digits, uniform on 1..9 as the official ``randint(1, 10)``;
  id 0 is in the vocabulary but never drawn); output 0..9, the sum mod 10. One
  answer token. Official source: ``make_sum_dataset.py --modular`` (the ``sum_mod``
  dataset; answer ``sum(values) % 10``).
  """

  name = "summation_mod_10"
  level = "decoder"
  MODULUS = 10
  input_vocab_size = 10
  output_vocab_size = 10

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    values = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 1, 10), length)
    return {"input": values, "target": jnp.sum(values, axis=1, keepdims=True) % self.MODULUS}


class Sorting(Task):
  """Sort a sequence of tokens (the official single-token variant).

  Tokens: input 0..49, uniform (the official draws ids from 50 single-token words
  and sorts them by id); output 0..49, the input in ascending order.
  ``output_length(l) = l``. Official source: ``make_sort_dataset.py --single_digit``.
  (The official multi-digit variant, numbers 10..9999 as digit strings, is
  :class:`SortingMultiDigit`.)
  """

  name = "sorting"
  level = "decoder"
  VOCAB = 50
  input_vocab_size = VOCAB
  output_vocab_size = VOCAB

  def output_length(self, length):
    return length

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    x = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, self.VOCAB),
                          length)
    inside = padding.before(length, max_length)
    ordered = jnp.sort(jnp.where(inside, x, self.VOCAB), axis=1)  # padding sorts last
    return {"input": x, "target": jnp.where(inside, ordered, 0)}


def _decimal_add(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a + b`` of little-endian decimal digit arrays [B, W] -> digits [B, W + 1].

  Carry-lookahead: a column generates a carry when its digit sum is >= 10 and
  propagates one when it is 9; the carry into each column is an associative scan.
  """
  pad = lambda d: jnp.pad(d, ((0, 0), (0, 1)))
  s = pad(a) + pad(b)
  gen, prop = s >= 10, s == 9

  def combine(lo, hi):
    return hi[0] | (hi[1] & lo[0]), hi[1] & lo[1]

  carries, _ = jax.lax.associative_scan(combine, (gen, prop), axis=1)
  carry_in = jnp.concatenate([jnp.zeros_like(carries[:, :1]), carries[:, :-1]], axis=1)
  return (s + carry_in) % 10


class Addition(Task):
  """Add two decimal integers, written as usual (most significant digit first).

  Input (``l >= 3``): ``a + b`` in ``l`` tokens: ``a`` has ``d_a`` digits, ``d_a``
  uniform on ``1..l-2``, and ``b`` has ``d_b = l - 1 - d_a``; a number of ``d``
  digits is uniform on ``10**(d-1)..10**d - 1`` (on ``0..9`` for ``d = 1``), as in
  the official builder. Tokens: input 0..9 (digits), 10 (+). Output
  (``output_length(l) = l``): the sum's digits, most significant first without
  leading zeros (``0`` is written ``0``), then the termination token 10, then 0s as
  padding; ``target_mask`` is True up to and including the termination token.
  Example: ``5 3 7 + 1 9`` -> ``5 5 6 10 0 0``.
  Length convention: the official categories are digit counts per operand ("5-by-5")
  with a natural-language prompt; here ``l`` counts the tokens of ``a + b`` (so
  ``l = 41`` includes e.g. 20-by-20), like ``binary_addition``. For ``l < 3`` no sum
  fits: the input is all 0s and the answer is masked out (never scored or trained).
  Official source: ``make_addition_dataset.py``.
  """

  name = "addition"
  level = "decoder"
  PLUS = 10
  TERMINATION = 10
  input_vocab_size = 11
  output_vocab_size = 11

  def output_length(self, length):
    return length

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    x, total, size, fits = self._operands_and_sum(rng, batch_size, length, max_length)
    out = padding.arange_row(max_length)
    body = jnp.where(out < size, padding.take(total, size - 1 - out), 0)  # most significant first
    target = jnp.where(out == size, self.TERMINATION, body)
    return {"input": jnp.where(fits, x, 0), "target": jnp.where(fits, target, 0),
            "target_mask": fits & (out <= size)}

  def _operands_and_sum(self, rng: jax.Array, batch_size: int, length, max_length: int):
    """The prompt ``a + b`` and its sum, shared by :class:`AdditionReversed`.

    Returns ``(x, total, size, fits)``: the prompt [B, max_length] (0 past ``length``, not
    yet zeroed for ``l < 3``), the sum's little-endian digits [B, max(max_length - 2, 1) + 1],
    its digit count [B, 1] (at least one) and whether a sum fits (``length >= 3``).
    """
    width = max(max_length - 2, 1)                  # digits of the longest operand
    n = jnp.maximum(length, 3)                      # a stand-in of 3 tokens when length < 3
    k_len, k_a, k_b = jax.random.split(rng, 3)
    len_a = jax.random.randint(k_len, (batch_size, 1), 1, n - 1)
    len_b = n - 1 - len_a

    def number(key, digits):  # big-endian digits [B, width], 0 past `digits`
      k_raw, k_lead = jax.random.split(key)
      raw = jax.random.randint(k_raw, (batch_size, width), 0, 10)
      nonzero_lead = jax.random.randint(k_lead, (batch_size, 1), 1, 10)
      lead = jnp.where(digits > 1, nonzero_lead, raw[:, :1])  # 1..9, or 0..9 for one digit
      big = jnp.concatenate([lead, raw[:, 1:]], axis=1)
      return jnp.where(padding.before(digits, width), big, 0)

    a, b = number(k_a, len_a), number(k_b, len_b)
    pos = padding.arange_row(max_length)
    x = jnp.where(pos < len_a, padding.take(a, pos),
                  jnp.where(pos == len_a, self.PLUS, padding.take(b, pos - len_a - 1)))
    x = padding.zero_past(x, n)
    # Little-endian digits, the sum, its size (at least one digit).
    col = padding.arange_row(width)
    a_le = jnp.where(col < len_a, padding.take(a, len_a - 1 - col), 0)
    b_le = jnp.where(col < len_b, padding.take(b, len_b - 1 - col), 0)
    total = _decimal_add(a_le, b_le)                                   # [B, width + 1]
    nonzero = total[:, ::-1] != 0
    size = jnp.where(jnp.any(nonzero, axis=1, keepdims=True),
                     total.shape[1] - jnp.argmax(nonzero, axis=1)[:, None], 1)
    return x, total, size, jnp.asarray(length >= 3)


class AdditionReversed(Addition):
  """Add two decimal integers; the sum is written least significant digit first.

  posenc's variant of :class:`Addition`, not Kazemnejad et al.'s format: the "reversed"
  answer that makes addition learnable by small Transformers (Lee et al., 2023, "Teaching
  Arithmetic to Small Transformers"; Zhou et al., 2024). Written least significant digit
  first, each answer digit depends only on its column's two operand digits and the carry
  from the column before, and that carry follows from the previous column's operand digits
  and the answer digit just generated: the carry flows in generation order. Written most
  significant first (:class:`Addition`), the first answer digit already depends on the
  carry chain through every column.
  The prompt is unchanged: input ``a + b`` in ``l`` tokens, operands most significant
  digit first, drawn exactly as :class:`Addition` draws them (the same key gives the same
  input). Tokens: input 0..9 (digits), 10 (+). Output (``output_length(l) = l``): the sum's
  digits, least significant first, without the most significant zeros (``0`` is written
  ``0``), then the termination token 10, then 0s as padding; ``target_mask`` is True up to
  and including the termination token.
  Example: ``5 3 7 + 1 9`` -> ``6 5 5 10 0 0`` (537 + 19 = 556).
  For ``l < 3`` no sum fits: the input is all 0s and the answer is masked out (never scored
  or trained), as :class:`Addition`.
  """

  name = "addition_reversed"

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    x, total, size, fits = self._operands_and_sum(rng, batch_size, length, max_length)
    out = padding.arange_row(max_length)
    body = jnp.where(out < size, padding.take(total, out), 0)  # least significant first
    target = jnp.where(out == size, self.TERMINATION, body)
    return {"input": jnp.where(fits, x, 0), "target": jnp.where(fits, target, 0),
            "target_mask": fits & (out <= size)}


class AdditionLittleEndian(Addition):
  """Add two decimal integers, operands and sum all written least significant digit first.

  posenc's variant of :class:`Addition`, not Kazemnejad et al.'s format. In
  :class:`AdditionReversed` the answer is little-endian but the operands are not, so answer
  digit ``i`` reads operand digits that move two slots further away per answer digit (a
  reversal). Written little-endian throughout, answer digit ``i`` reads digit ``i`` of each
  operand: the first at a fixed offset from the answer slot (``l + 1``, copy's offset) and
  the second at a fixed offset within each sequence, plus the carry from the column before:
  two aligned copies and a carry.
  The numbers are :class:`Addition`'s (the same key draws the same ``a`` and ``b``); only
  the order of each operand's digits in the prompt differs. Input ``a + b`` in ``l``
  tokens; tokens: input 0..9 (digits), 10 (+). Output (``output_length(l) = l``): the sum,
  least significant digit first, without the most significant zeros, then the termination
  token 10, then 0s; ``target_mask`` True up to and including the termination token.
  Example: ``7 3 5 + 9 1`` (537 + 19) -> ``6 5 5 10 0 0``. For ``l < 3`` no sum fits:
  the input is all 0s and the answer is masked out, as :class:`Addition`.
  """

  name = "addition_little_endian"

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    out = AdditionReversed._sample_padded(self, rng, batch_size, length, max_length)
    x = out["input"]
    n = jnp.maximum(length, 3)
    pos = padding.arange_row(max_length)
    len_a = jnp.argmax(x == self.PLUS, axis=1)[:, None]  # the operand a fills 0..len_a-1
    flipped = jnp.where(pos < len_a, padding.take(x, len_a - 1 - pos),
                        jnp.where(pos == len_a, x, padding.take(x, n + len_a - pos)))
    return {**out, "input": padding.zero_past(flipped, n)}


def _render_numbers(values: jax.Array, widths: jax.Array, sep: int, width: int) -> jax.Array:
  """Numbers [B, K] of ``widths`` digits (0: no number) -> tokens [B, width].

  Each number is written most significant digit first and followed by ``sep``; the
  slots of a row are laid out in order, unused slots (width 0) take no tokens. Token
  ``p`` belongs to the number whose span (digits and separator) covers it, found by a
  search of the spans' cumulative ends. Tokens past the last number are arbitrary.
  """
  pow10 = jnp.array([1, 10, 100, 1000, 10000], jnp.int32)
  parts = jnp.where(widths > 0, widths + 1, 0)
  ends = jnp.cumsum(parts, axis=1)
  starts = ends - parts
  pos = padding.arange_row(width)
  idx = jax.vmap(lambda e: jnp.searchsorted(e, pos[0], side="right"))(ends)   # [B, width]
  offset = pos - padding.take(starts, idx)
  w, v = padding.take(widths, idx), padding.take(values, idx)
  digit = (v // pow10[jnp.clip(w - 1 - offset, 0, 4)]) % 10
  return jnp.where(offset < w, digit, sep)


class SortingMultiDigit(Task):
  """Sort a sequence of decimal numbers 10..9999 (the official multi-digit variant).

  Tokens: input 0..9 (digits), 10 (separator); output the same 11 symbols. The input is
  numbers written at their natural width (2 to 4 digits, most significant first, no
  leading zeros) with one separator between consecutive numbers, ``l`` tokens in all;
  the target is the same numbers in ascending order in the same format (the same
  widths, so ``output_length(l) = l``), all ``l`` tokens scored.
  Example: ``5 3 7 10 1 9 10 2 0 2 4`` -> ``1 9 10 5 3 7 10 2 0 2 4``.
  Widths: a number of width ``w`` takes ``w + 1`` tokens with its separator, so the
  widths satisfy ``sum(w_i + 1) = l + 1`` with parts in {3, 4, 5}; every ``l >= 2`` is
  reachable. They are drawn in order: each width among those that leave a fillable
  remainder (0 or at least 3), with probability proportional to how many numbers of
  10..9999 have it (90, 900, 9000) renormalised over those choices; the number is then
  uniform among the numbers of its width. Unconstrained, a number is thus uniform on
  10..9999, as the official ``np.random.randint(10, 10000, n)``; only the last few
  numbers of a row (and every number at short lengths: ``l = 2, 3, 4`` is one number of
  2, 3, 4 digits, ``l = 5`` two of 2) are steered to widths that fill ``l`` exactly.
  For ``l < 2`` no number fits: the input is all 0s and the answer is masked out
  (never scored or trained), as :class:`Addition` for ``l < 3``.
  Differences from the official code, and why: its category is the count ``n`` of
  numbers and its text is T5-tokenised (a number may take several sub-word tokens);
  here ``l`` counts input tokens, as for every posenc task, with one token per digit,
  so the count of numbers follows from the drawn widths (about ``(l + 1) / 4.9``).
  Official source: ``make_sort_dataset.py`` (``generate_data_multi_digit``).
  """

  name = "sorting_multi_digit"
  level = "decoder"
  SEP = 10
  MIN_WIDTH, MAX_WIDTH = 2, 4      # digits of 10..9999
  input_vocab_size = 11
  output_vocab_size = 11

  def output_length(self, length):
    return length

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    n = jnp.maximum(length, self.MIN_WIDTH)     # a stand-in of 2 tokens when length < 2
    slots = max((max_length + 1) // (self.MIN_WIDTH + 1), 1)  # most numbers in max_length
    choices = jnp.arange(self.MIN_WIDTH, self.MAX_WIDTH + 1, dtype=jnp.int32)   # 2, 3, 4
    log_count = jnp.log(9.0 * 10.0 ** (choices - 1))                            # 90, 900, 9000
    k_width, k_value = jax.random.split(rng)

    def draw_width(left, key):  # left [B]: tokens still to fill plus one (0: row full)
      rest = left[:, None] - (choices + 1)
      fillable = (rest == 0) | (rest >= self.MIN_WIDTH + 1)
      w = jax.random.categorical(key, jnp.where(fillable, log_count, -jnp.inf)) + self.MIN_WIDTH
      w = jnp.where(left > 0, w, 0)
      return left - jnp.where(w > 0, w + 1, 0), w

    start = jnp.broadcast_to(jnp.asarray(n + 1, jnp.int32), (batch_size,))
    _, widths = jax.lax.scan(draw_width, start, jax.random.split(k_width, slots))
    widths = widths.T                                               # [B, slots], 0: unused
    pow10 = jnp.array([1, 10, 100, 1000, 10000], jnp.int32)
    drawn = jnp.maximum(widths, self.MIN_WIDTH)
    values = jax.random.randint(k_value, widths.shape, pow10[drawn - 1], pow10[drawn])
    ordered = jnp.sort(jnp.where(widths > 0, values, pow10[-1]), axis=1)  # unused sort last
    ordered_widths = jnp.where(ordered < pow10[-1],
                               1 + jnp.sum(ordered[..., None] >= pow10[1:4], axis=-1), 0)
    x = padding.zero_past(_render_numbers(values, widths, self.SEP, max_length), n)
    target = padding.zero_past(_render_numbers(ordered, ordered_widths, self.SEP, max_length), n)
    fits = jnp.asarray(length >= self.MIN_WIDTH)
    return {"input": jnp.where(fits, x, 0), "target": jnp.where(fits, target, 0),
            "target_mask": jnp.broadcast_to(fits & padding.before(length, max_length),
                                            (batch_size, max_length))}


TASKS = (Copy, Addition, AdditionReversed, AdditionLittleEndian, SummationMod10, Sorting, SortingMultiDigit)
