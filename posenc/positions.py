"""Position samplers: explicit int32 positions for every token.

Positions are data, not something a layer invents, so randomized positions
(Ruoss et al., ACL 2023), offsets and interpolation all go through one code
path and compose with every scheme.

A sampler is ``sample(rng, batch_size, length, padded_length) -> int32 [B|1, padded_length]``:
the first ``length`` entries are the positions of the real tokens; entries past
them belong to padding (masked everywhere) and are set so that they never
exceed the sampler's bound.

* ``contiguous`` (default): ``offset, offset+1, …``; with ``random_offset`` the
  offset is drawn per sequence from ``[0, max_position − length]``.
* ``randomized``: ``length`` distinct integers from ``[0, max_position)``,
  sorted (strictly increasing), drawn per sequence (``per_example``) or once
  per batch. Deterministic for a fixed key.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from posenc.errors import ConfigError

KINDS = ("contiguous", "randomized")
EVAL_MODES = ("same", "contiguous")

Sampler = Callable[[jax.Array, int, int, int], jax.Array]


def contiguous(rng, batch_size: int, length: int, padded_length: int, *, offset: int = 0,
               random_offset: bool = False, max_position: int = 2048) -> jax.Array:
  """``offset + [0, 1, …]``: ``[1, padded_length]``, or ``[B, padded_length]`` with a random offset."""
  base = jnp.arange(padded_length, dtype=jnp.int32)
  if not random_offset:
    return (base + offset)[None]
  high = jnp.maximum(max_position - length, 0) + 1
  offsets = jax.random.randint(rng, (batch_size, 1), 0, high, dtype=jnp.int32)
  pos = base[None] + offsets
  return jnp.where(base[None] < length, pos, offsets)  # padding stays in range


def randomized(rng, batch_size: int, length: int, padded_length: int, *,
               max_position: int = 2048, per_example: bool = True) -> jax.Array:
  """Sorted draws of ``length`` distinct positions from ``[0, max_position)``.

  ``length`` may be traced (``padded_length`` is static).
  """
  if isinstance(length, int) and length > max_position:
    raise ValueError(f"cannot draw {length} distinct positions below {max_position}")
  k = min(padded_length, max_position)

  def one(key):
    # The k largest of iid uniform noise form a uniform random subset, in random order;
    # its first `length` entries are a uniform subset of size `length`.
    noise = jax.random.uniform(key, (max_position,))
    _, idx = jax.lax.top_k(noise, k)
    idx = jnp.where(jnp.arange(k) < length, idx, max_position)
    pos = jnp.sort(idx)
    pos = jnp.where(pos == max_position, 0, pos).astype(jnp.int32)
    return jnp.pad(pos, (0, padded_length - k))

  if per_example:
    return jax.vmap(one)(jax.random.split(rng, batch_size))
  return one(rng)[None]


def make(cfg: ml_collections.ConfigDict, *, train: bool) -> Sampler:
  """The sampler that ``cfg`` (``config.positions``) asks for, for training or evaluation."""
  validate(cfg)
  kind = cfg.kind
  if not train and cfg.eval == "contiguous":
    kind = "contiguous"
  if kind == "randomized":
    return functools.partial(randomized, max_position=cfg.max_position, per_example=cfg.per_example)
  return functools.partial(contiguous, offset=cfg.offset if train or cfg.eval == "same" else 0,
                           random_offset=cfg.random_offset and (train or cfg.eval == "same"),
                           max_position=cfg.max_position)


def shared_contiguous(cfg: ml_collections.ConfigDict, *, train: bool) -> bool:
  """Whether :func:`make` gives ``offset + arange(L)`` shared by the batch (``[1, L]``): the
  promise of ``Dims.contiguous``, which lets a hook slice a table instead of gathering."""
  kind = cfg.kind if (train or cfg.eval == "same") else "contiguous"
  return kind == "contiguous" and not (cfg.random_offset and (train or cfg.eval == "same"))


def bound(cfg: ml_collections.ConfigDict, total_length: int, *, train: bool) -> int:
  """A static bound: every position of a sequence of ``total_length`` tokens is below it."""
  kind = cfg.kind if (train or cfg.eval == "same") else "contiguous"
  offset_used = train or cfg.eval == "same"
  if kind == "randomized" or (cfg.random_offset and offset_used):
    return cfg.max_position
  return total_length + (cfg.offset if offset_used else 0)


def validate(cfg: ml_collections.ConfigDict) -> None:
  if cfg.kind not in KINDS:
    raise ConfigError("config.positions.kind", f"unknown sampler {cfg.kind!r}; choose one of {KINDS}")
  if cfg.eval not in EVAL_MODES:
    raise ConfigError("config.positions.eval", f"unknown value {cfg.eval!r}; choose one of {EVAL_MODES}")
  if cfg.max_position < 1:
    raise ConfigError("config.positions.max_position", f"must be >= 1, got {cfg.max_position}")
  if cfg.offset < 0:
    raise ConfigError("config.positions.offset", f"must be >= 0, got {cfg.offset}")


def check_length(cfg: ml_collections.ConfigDict, total_length: int, *, train: bool, field: str) -> None:
  """Refuses sequences longer than the randomized sampler's range."""
  kind = cfg.kind if (train or cfg.eval == "same") else "contiguous"
  if (kind == "randomized" or cfg.random_offset) and total_length > cfg.max_position:
    raise ConfigError(
        "config.positions.max_position",
        f"{field} needs sequences of {total_length} tokens but positions are drawn from "
        f"[0, {cfg.max_position}); raise --config.positions.max_position to at least "
        f"{total_length} or shorten {field}")
