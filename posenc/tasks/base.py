"""The task interface: a pure, jittable sampler of (input, target, mask).

A task draws a fresh batch for one input length ``length`` (a Python int, so
shapes are static):

  sample(rng, batch_size, length) -> {
      "input":       int32 [B, length]                 tokens in [0, input_vocab_size)
      "target":      int32 [B, output_length(length)]  tokens in [0, output_vocab_size)
      "target_mask": bool  [B, output_length(length)]  which answer tokens are scored
  }

The data pipeline (``posenc.data``) places inputs and answers into one padded
sequence, so that a range of lengths shares one compiled program.
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp


class Task(abc.ABC):
  """Base class; subclasses set the class attributes and implement ``_sample``."""

  name: str = ""
  level: str = ""  # "R", "DCF", "CS"
  input_vocab_size: int = 0
  output_vocab_size: int = 0

  def output_length(self, length: int) -> int:
    """Number of answer tokens for an input of ``length`` tokens."""
    return 1

  @abc.abstractmethod
  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    """Returns ``input``, ``target`` and optionally ``target_mask``."""

  def sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    length = int(length)
    if length < 1:
      raise ValueError(f"{self.name}: length must be >= 1, got {length}")
    out = dict(self._sample(rng, batch_size, length))
    out_len = self.output_length(length)
    out["input"] = out["input"].astype(jnp.int32)
    out["target"] = out["target"].astype(jnp.int32)
    if "target_mask" not in out:
      out["target_mask"] = jnp.ones((batch_size, out_len), bool)
    out["target_mask"] = out["target_mask"].astype(bool)
    assert out["input"].shape == (batch_size, length), out["input"].shape
    assert out["target"].shape == (batch_size, out_len), out["target"].shape
    return out

  def __repr__(self) -> str:
    return f"<task {self.name} ({self.level})>"
