"""Deterministic context-free tasks (Chomsky hierarchy level DCF)."""

from __future__ import annotations

import jax

from posenc.tasks.base import Task


class ReverseString(Task):
  """Reverse a binary string.

  Tokens: input 0, 1 (bits); output 0, 1. ``output_length(l) = l``.
  """

  name = "reverse_string"
  level = "DCF"
  input_vocab_size = 2
  output_vocab_size = 2

  def output_length(self, length):
    return length

  def _sample(self, rng, batch_size, length):
    bits = jax.random.randint(rng, (batch_size, length), 0, 2)
    return {"input": bits, "target": bits[:, ::-1]}


TASKS = (ReverseString,)
