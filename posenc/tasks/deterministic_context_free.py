"""Deterministic context-free tasks (Chomsky hierarchy level DCF).

Token meanings, answer conventions and sampling distributions follow the
published code: ``tasks/dcf/*.py`` of google-deepmind/randomized_positional_encodings
(identical in substance to google-deepmind/neural_networks_chomsky_hierarchy). The
official stack, bracket and equation samplers are per-sample Python/numpy loops and
recursion; here they are vectorised over the batch and jittable, drawing from the same
distributions. Every sampler is native padded (``_sample_padded``): it draws at the
static width ``max_length`` and masks what lies past the (possibly traced)
``length``, so one compiled program serves every length of a bucket.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.tasks import padding
from posenc.tasks.base import Task


class ReverseString(Task):
  """Reverse a binary string.

  Tokens: input 0, 1 (bits); output 0, 1. ``output_length(l) = l``.
  Official source: ``tasks/dcf/reverse_string.py`` (``vocab_size=2``).
  """

  name = "reverse_string"
  level = "DCF"
  input_vocab_size = 2
  output_vocab_size = 2

  def output_length(self, length: int) -> int:
    return length

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    bits = padding.zero_past(jax.random.randint(rng, (batch_size, max_length), 0, 2), length)
    target = padding.take(bits, length - 1 - padding.arange_row(max_length))
    return {"input": bits, "target": padding.zero_past(target, length)}


class StackManipulation(Task):
  """Run stack actions on an initial stack; answer the final stack, top first.

  Input: an initial stack given bottom to top (``s`` bits, ``s`` uniform on
  ``1..l-1``), then ``l - s`` actions uniform on {POP, PUSH 0, PUSH 1}; for
  ``l = 1`` the input is a one-bit stack and no action. A POP on an empty stack
  is ignored. Tokens: input 0, 1 (stack bits), 2 (POP), 3 (PUSH 0), 4 (PUSH 1).
  Output (``output_length(l) = l + 1``): the final stack top to bottom, then the
  termination token 2, then 0s as padding; tokens 0, 1 (bits), 2 (termination).
  ``target_mask`` is True up to and including the termination token, False on
  the padding after it (as the official ``accuracy_mask``).
  Example: ``0 1 1 0 PUSH1 POP POP`` -> ``1 1 0 2 0 0 0 0``.
  Official source: ``tasks/dcf/stack_manipulation.py``.
  """

  name = "stack_manipulation"
  level = "DCF"
  POP, PUSH0, PUSH1 = 2, 3, 4
  TERMINATION = 2
  input_vocab_size = 5
  output_vocab_size = 3

  def output_length(self, length: int) -> int:
    return length + 1

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    k_len, k_sym = jax.random.split(rng)
    stack_len = jax.random.randint(k_len, (batch_size, 1), 1, jnp.maximum(length, 2))
    # r uniform on 0..5 gives a uniform bit (r % 2) or a uniform action (2 + r // 2).
    r = jax.random.randint(k_sym, (batch_size, max_length), 0, 6)
    pos = padding.arange_row(max_length)
    valid = pos < length
    x = padding.zero_past(jnp.where(pos < stack_len, r % 2, self.POP + r // 2), length)

    # Every token is a push (stack bits and PUSH x) or a pop. The height after
    # step t is the walk of +-1 steps reflected at 0 (a POP on an empty stack is
    # ignored). A value pushed at t survives iff the height never later drops
    # below its height; survivors, in time order, hold heights 1..H. Past
    # ``length`` the walk stands still (its height stays the final one).
    push = (x != self.POP) & valid
    value = jnp.where(x < 2, x, x - self.PUSH0)
    walk = jnp.cumsum(jnp.where(valid, jnp.where(push, 1, -1), 0), axis=1)
    height = walk - jnp.minimum(jax.lax.cummin(walk, axis=1), 0)             # [B, M]
    later_min = jnp.concatenate(
        [jax.lax.cummin(height, axis=1, reverse=True)[:, 1:],
         jnp.full((batch_size, 1), max_length + 1, height.dtype)], axis=1)
    survives = push & (later_min >= height)
    final_h = padding.take(height, jnp.reshape(length - 1, (1, 1)))          # [B, 1]
    out_len = max_length + 1
    slot = jnp.where(survives, final_h - height, out_len)  # top of stack -> slot 0
    rows = jnp.broadcast_to(jnp.arange(batch_size)[:, None], slot.shape)
    target = jnp.zeros((batch_size, out_len), jnp.int32)
    target = target.at[rows, slot].set(value, mode="drop")
    out_pos = jnp.arange(out_len)[None, :]
    target = jnp.where(out_pos == final_h, self.TERMINATION, target)
    return {"input": x, "target": target, "target_mask": out_pos <= final_h}


# Token ids of the bracket alphabet (ModularArithmeticBrackets' ids, used internally
# by the expression generator).
_MOD = 5
_PLUS, _MINUS, _TIMES, _OPEN, _CLOSE = 5, 6, 7, 8, 9


def bracket_expressions(rng: jax.Array, batch_size: int, length, max_length: int,
                        mult: bool) -> tuple[jax.Array, jax.Array]:
  """Random bracketed expressions of exactly ``length`` tokens and their values mod 5.

  The distribution of the official recursive generator
  (``generate_one_expression_and_result`` in ``tasks/dcf/modular_arithmetic_brackets.py``):
  an expression of length 1, 2, 3, 4 is ``d``, ``-d``, ``(d)``, ``(-d)`` with a
  uniform digit ``d``; for ``n >= 5`` it is ``(L op R)`` with ``|L|`` uniform on
  ``1..n-4``, ``|R| = n - 3 - |L|`` and ``op`` uniform on {+, -} or {+, -, *}
  (``mult``). Here the recursion is unrolled into one ``lax.scan`` of
  ``max_length`` steps over the whole batch: a per-sample stack of pending items
  (an expression of ``n`` tokens, stored as ``n >= 1``, or a literal token
  ``t``, stored as ``-t - 1``) is popped once per step, and every pop emits
  exactly one token, so the stack never holds more than ``length`` items and is
  empty after ``length`` steps; the remaining steps emit 0s and change nothing.
  ``length`` may be traced (``1 <= length <= max_length``).

  Returns tokens int32 [B, max_length] (ids: 0..4 digits, 5 +, 6 -, 7 *, 8 (,
  9 ); 0 past ``length``) and values int32 [B] in 0..4.
  """
  # One uniform draw per step for each of: the digit, the operator, the split
  # (each used only if that step needs it). floor(k u) is uniform on 0..k-1 up
  # to float32 granularity (bias < 1e-6).
  u_digit, u_op, split_u = jax.random.uniform(rng, (3, max_length, batch_size))
  digits = jnp.floor(u_digit * _MOD).astype(jnp.int32)
  ops = _PLUS + jnp.floor(u_op * (3 if mult else 2)).astype(jnp.int32)
  pos = jnp.arange(max_length)[None, :]
  lit = lambda t: -t - 1

  def step(carry, xs):
    stack, sp = carry
    digit, op, u = xs
    active = sp > 0
    top = jnp.take_along_axis(stack, jnp.maximum(sp - 1, 0)[:, None], axis=1)[:, 0]
    top = jnp.where(active, top, lit(0))  # an empty stack emits the literal 0
    sp = jnp.maximum(sp - 1, 0)
    is_lit = top < 0
    n = top
    token = jnp.where(is_lit, -top - 1,
                      jnp.where(n == 1, digit, jnp.where(n == 2, _MINUS, _OPEN)))
    left = 1 + jnp.clip(jnp.floor(u * (n - 4)).astype(jnp.int32), 0, jnp.maximum(n - 5, 0))
    right = n - 3 - left
    # Items pushed, bottom to top: n=2: [1]; n=3: [')', 1]; n=4: [')', 2];
    # n>=5: [')', R, op, L] (so L is expanded next).
    items = (jnp.where(n == 2, 1, lit(_CLOSE)),
             jnp.where(n == 3, 1, jnp.where(n == 4, 2, right)),
             lit(op),
             left)
    count = jnp.where(is_lit | (n == 1), 0,
                      jnp.where(n == 2, 1, jnp.where(n <= 4, 2, 4)))
    for j, item in enumerate(items):
      write = (pos == (sp + j)[:, None]) & (j < count)[:, None]
      stack = jnp.where(write, item[:, None], stack)
    return (stack, sp + count), token

  stack0 = jnp.zeros((batch_size, max_length), jnp.int32).at[:, 0].set(length)
  sp0 = jnp.ones((batch_size,), jnp.int32)
  _, tokens = jax.lax.scan(step, (stack0, sp0), (digits, ops, split_u))
  tokens = tokens.T
  return tokens, evaluate_bracketed(tokens, length)


def evaluate_bracketed(tokens: jax.Array, length=None) -> jax.Array:
  """Values mod 5 of fully bracketed expressions, tokens int32 [B, n] -> [B].

  Only the first ``length`` tokens are read (default: all ``n``; ``length`` may
  be traced).

  A left-to-right scan with one (accumulator, pending operator) pair per
  bracket depth: an operand (a digit, or the value of a closed bracket) is
  combined into its depth's accumulator with the pending operator, if any. A
  ``-`` is unary (negates the next digit) unless it follows a digit or ``)``.
  Valid for the grammar of :func:`bracket_expressions`, where each bracket
  holds at most one binary operator, so no precedence is needed.
  """
  batch, n = tokens.shape
  depth_cap = n // 2 + 2
  levels = jnp.arange(depth_cap)[None, :]

  def at(table, idx):
    return jnp.take_along_axis(table, idx[:, None], axis=1)[:, 0]

  def step(carry, t):
    acc, pending, depth, neg, after_operand = carry
    is_digit = t < _MOD
    is_open, is_close = t == _OPEN, t == _CLOSE
    unary = (t == _MINUS) & ~after_operand
    binary = (t >= _PLUS) & (t <= _TIMES) & ~unary
    # '(' opens a fresh level.
    fresh = (levels == (depth + 1)[:, None]) & is_open[:, None]
    acc = jnp.where(fresh, 0, acc)
    pending = jnp.where(fresh, -1, pending)
    # A digit or ')' delivers an operand to its level.
    level = jnp.where(is_close, depth - 1, depth)
    v = jnp.where(is_close, at(acc, jnp.maximum(depth, 0)), jnp.where(neg, -t, t))
    a, p = at(acc, jnp.maximum(level, 0)), at(pending, jnp.maximum(level, 0))
    combined = jnp.where(p == _PLUS, a + v, jnp.where(p == _MINUS, a - v, a * v))
    new = jnp.where(p < 0, v, combined) % _MOD
    deliver = (levels == level[:, None]) & (is_digit | is_close)[:, None]
    acc = jnp.where(deliver, new[:, None], acc)
    pending = jnp.where(deliver, -1, pending)
    # A binary operator waits for its right operand.
    pending = jnp.where((levels == depth[:, None]) & binary[:, None], t[:, None], pending)
    depth = depth + is_open.astype(jnp.int32) - is_close.astype(jnp.int32)
    neg = (neg | unary) & ~is_digit
    return (acc, pending, depth, neg, is_digit | is_close), None

  def masked_step(carry, xs):
    t, i = xs
    new, _ = step(carry, t)
    keep = i < length
    return jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, carry), None

  init = (jnp.zeros((batch, depth_cap), jnp.int32), jnp.full((batch, depth_cap), -1, jnp.int32),
          jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool), jnp.zeros((batch,), bool))
  if length is None:
    (acc, *_), _ = jax.lax.scan(step, init, tokens.T)
  else:
    (acc, *_), _ = jax.lax.scan(masked_step, init, (tokens.T, jnp.arange(n)))
  return acc[:, 0]


class ModularArithmeticBrackets(Task):
  """Value mod 5 of a random fully bracketed expression.

  Tokens: input 0..4 (digits), 5 (+), 6 (-), 7 (*), 8 ((), 9 ()); id 10 (the
  official ``x``) is in the vocabulary but never used. Output 0..4, the value
  mod 5. One answer token. The expression has exactly ``l`` tokens, drawn as
  the official generator does (``mult=True`` as in the papers' runs):
  ``l = 1..4`` give ``d``, ``-d``, ``(d)``, ``(-d)``; longer ones are
  ``(L op R)`` with a uniform split of the length and a uniform operator. A
  ``-`` right after ``(``, an operator, or at the start is a unary minus on
  the next digit (e.g. ``(3--2)`` = 0). Every ``l >= 1`` is valid.
  Official source: ``tasks/dcf/modular_arithmetic_brackets.py`` (modulus 5,
  ``input_size = modulus + 6``).
  """

  name = "modular_arithmetic_brackets"
  level = "DCF"
  input_vocab_size = 11
  output_vocab_size = 5

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    tokens, values = bracket_expressions(rng, batch_size, length, max_length, mult=True)
    return {"input": tokens, "target": values[:, None]}


class SolveEquation(Task):
  """Solve ``expression(x) = v`` mod 5 for the unknown digit ``x``.

  Input: a bracketed expression of ``l - 2`` tokens drawn as in
  ``modular_arithmetic_brackets`` but **without** multiplication (as in the
  official code, so that the solution is unique), one digit of which is
  replaced by ``x``, then ``=`` and the expression's value. The replaced digit
  is the first digit at or after a uniform position (cyclically), as in the
  official code. Tokens: input 0..4 (digits), 5 (+), 6 (-), 7 ((), 8 ()),
  9 (x), 10 (=); output 0..4, the hidden digit. One answer token.
  For ``l < 3`` no equation fits: as in the official code the input is all 0s
  and the answer 0, but here that answer is masked out (never scored, never
  in the loss).
  Official source: ``tasks/dcf/solve_equation.py`` (modulus 5).
  """

  name = "solve_equation"
  level = "DCF"
  X, EQUALS = 9, 10
  input_vocab_size = 11
  output_vocab_size = 5
  # Bracket-alphabet id -> this task's id (no '*': mult=False).
  _TO_TASK_IDS = (0, 1, 2, 3, 4, 5, 6, 0, 7, 8)

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    width = max(max_length - 2, 1)             # the longest expression
    n = jnp.clip(length - 2, 1, width)         # this expression (a stand-in when length < 3)
    k_expr, k_idx = jax.random.split(rng)
    tokens, values = bracket_expressions(k_expr, batch_size, n, width, mult=False)
    pos_e = padding.arange_row(width)
    is_digit = (tokens < _MOD) & (pos_e < n)
    start = jax.random.randint(k_idx, (batch_size, 1), 0, n)
    at_or_after = is_digit & (pos_e >= start)
    x_pos = jnp.where(jnp.any(at_or_after, axis=1),
                      jnp.argmax(at_or_after, axis=1), jnp.argmax(is_digit, axis=1))
    rows = jnp.arange(batch_size)
    solution = tokens[rows, x_pos]
    equation = jnp.asarray(self._TO_TASK_IDS)[tokens].at[rows, x_pos].set(self.X)
    pos = padding.arange_row(max_length)
    x = jnp.where(pos < n, padding.take(equation, pos),
                  jnp.where(pos == n, self.EQUALS, jnp.where(pos == n + 1, values[:, None], 0)))
    fits = jnp.asarray(length >= 3)
    return {"input": jnp.where(fits, x, 0), "target": jnp.where(fits, solution, 0)[:, None],
            "target_mask": jnp.broadcast_to(fits, (batch_size, 1))}


TASKS = (StackManipulation, ReverseString, ModularArithmeticBrackets, SolveEquation)
