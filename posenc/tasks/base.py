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

A task implements one of two samplers:

* ``_sample_padded(rng, batch_size, length, max_length)`` (preferred): ``length``
  may be a traced int32 scalar; outputs have the static shapes of
  ``max_length`` (input ``[B, max_length]``, target and mask
  ``[B, output_length(max_length)]``), entries past ``length`` /
  ``output_length(length)`` are ignored (the mask must be False there).
  ``output_length`` must then accept traced ints. One compiled program serves
  every length up to ``max_length``.
* ``_sample(rng, batch_size, length)`` with a static ``length``; the pipeline
  then picks the length with ``lax.switch`` (one branch per length, slower to
  compile).
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

  def sequence_length(self, length):
    """Tokens the model reads for an input of ``length``: the input, then the answer slots.

    A task with its own ``layout(sample, length, *, causal, padded_length)`` method (e.g.
    language modelling, where every token is also an answer) overrides both.
    """
    return length + self.output_length(length)

  def _sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    """Returns ``input``, ``target`` and optionally ``target_mask`` for a static length."""
    raise NotImplementedError

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    """Like ``_sample``, for a possibly traced ``length``, padded to ``max_length``."""
    raise NotImplementedError

  @property
  def native_padded(self) -> bool:
    """Whether this task samples a traced length itself (one program for many lengths)."""
    return type(self)._sample_padded is not Task._sample_padded

  def sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    """A batch of ``length`` (traced) padded to ``max_length``; needs ``native_padded``."""
    out = dict(self._sample_padded(rng, batch_size, length, max_length))
    out_max = self.output_length(max_length)
    if "target_mask" not in out:
      out["target_mask"] = jnp.broadcast_to(jnp.arange(out_max) < self.output_length(length),
                                            (batch_size, out_max))
    out = {k: v.astype(bool if k == "target_mask" else jnp.int32) for k, v in out.items()}
    assert out["input"].shape == (batch_size, max_length), out["input"].shape
    assert out["target"].shape == (batch_size, out_max), out["target"].shape
    return out

  def sample(self, rng: jax.Array, batch_size: int, length: int) -> dict:
    length = int(length)
    if length < 1:
      raise ValueError(f"{self.name}: length must be >= 1, got {length}")
    out_len = self.output_length(length)
    if self.native_padded:
      out = self.sample_padded(rng, batch_size, length, length)
      return {"input": out["input"], "target": out["target"][:, :out_len],
              "target_mask": out["target_mask"][:, :out_len]}
    out = dict(self._sample(rng, batch_size, length))
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
