"""Rotary position embedding, RoPE (Su et al., "RoFormer", 2021), with context extension.

Public math:

* :func:`frequencies` — ``θ_m = base^(−2m/d)`` for ``m = 0 .. d/2 − 1``.
* :func:`rotate` — turns channel pair ``m`` of ``x [..., L, d]`` by the angle
  ``pos·θ_m``. Pairing ``"interleaved"`` (default) rotates channels
  ``(2m, 2m+1)`` as RoFormer does; ``"half"`` rotates ``(m, m + d/2)`` as
  GPT-NeoX and Llama do (checkpoints differ by that permutation). A pair
  ``(a, b)`` becomes ``(a·cos − b·sin, a·sin + b·cos)``.
* :func:`scaled_frequencies` — the static context-extension rules
  (``linear``, ``ntk``, ``yarn``) and :func:`dynamic_ntk_frequencies`, with the
  formulas of HF ``transformers`` (``modeling_rope_utils``) and of the YaRN
  authors' code (``jquesnelle/yarn``, ``scaled_rope/LlamaYaRNScaledRotaryEmbedding.py``).

Properties (tested): ``rotate(q, a)·rotate(k, b)`` depends only on ``a − b``;
norms are preserved; the two pairings agree up to a channel permutation.

The module rotates q and k (never v) in every layer; it has no parameters.

Context extension (``encoding.scaling``) is decided **per sequence**, by the sequence's
own length, never by the padded length of the evaluation bucket it is batched in. With
``L`` the original length (``encoding.original_length``, by default ``dims.train_length``,
the longest training sequence: input plus answer) and ``L'`` the sequence's length:

* ``L'`` is one past the largest position among the row's real tokens (``valid``; the
  hook asks for it and for the whole sequence's positions, ``PROJECT_VALID`` and
  ``PROJECT_CONTEXT``). With contiguous positions from 0 that is the number of real
  tokens (in the encoder transducer: the input plus the answer slots; in a decoder: the
  prompt, SEP and the answer). Padding slots, whatever positions they hold, never count.
* a sequence with ``L' ≤ L`` is never rescaled: it is rotated exactly as in training.
* ``linear``, ``ntk`` and ``yarn`` rescale a sequence with ``L' > L`` by
  ``s = encoding.factor`` or, when that is 0, ``s = L'/L``; so every sequence of an
  evaluation gets its own ``s`` (reverse_string trained on inputs up to 16, ``L = 32``: an
  input of 23 is ``L' = 46`` tokens with its answer, ``s = 46/32 ≈ 1.44``).
* ``dynamic_ntk`` uses HF's rule with the sequence's length as the current length:
  ``base' = base·(α·L'/L − (α − 1))^{d/(d−2)}``, ``α = encoding.factor`` (0 → 1, which is
  plain NTK with ``s = L'/L``). In greedy decoding (``posenc.decoding``) the current length
  is the same ``L'`` in the prefill and in every step (the buffer's real tokens: prompt
  plus answer slots), so the cached keys and each new query are rotated as in the full
  forward pass.

With randomized positions or position offsets, training positions already reach past
``L`` (up to ``positions.max_position``, or ``L + offset``), and ``L'`` counts positions,
not tokens: set ``encoding.original_length`` to that training bound, so that training is
never rescaled and ``s`` is measured against the positions the model has seen.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

SCALINGS = ("none", "linear", "ntk", "dynamic_ntk", "yarn")
PAIRINGS = ("interleaved", "half")


def _check_dim(dim: int) -> None:
  if dim % 2:
    raise ValueError(f"rotary encodings need an even head width, got {dim}")


def _np_frequencies(dim: int, base: float) -> np.ndarray:
  return float(base) ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)


def frequencies(dim: int, base: float = 10000.0) -> jax.Array:
  """``θ_m = base^(−2m/dim)``, ``m = 0 .. dim/2 − 1`` (float32, ``[dim/2]``)."""
  _check_dim(dim)
  return jnp.asarray(_np_frequencies(dim, base), jnp.float32)


def yarn_attention_factor(factor: float) -> float:
  """YaRN's magnitude correction ``0.1·ln s + 1`` (1 for ``s ≤ 1``), applied to cos and sin."""
  return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def yarn_correction_range(dim: int, base: float, original_length: int, beta_fast: float = 32.0,
                          beta_slow: float = 1.0) -> tuple[float, float]:
  """Pair indices ``(low, high)`` between which YaRN ramps from θ to θ/s.

  A pair whose wavelength fits ``β`` times into the original length ``L`` has
  index ``d·ln(L / (2πβ)) / (2 ln base)``; ``low`` is that for ``β_fast``
  (floored, at least 0), ``high`` for ``β_slow`` (ceiled, at most ``d − 1``).
  """
  def pair_index(rotations):
    return dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low = max(math.floor(pair_index(beta_fast)), 0)
  high = min(math.ceil(pair_index(beta_slow)), dim - 1)
  return float(low), float(high)


def extended_frequencies(dim: int, factor, *, base: float = 10000.0, scaling: str = "none",
                         original_length: int = 0, beta_fast: float = 32.0,
                         beta_slow: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Frequencies ``[*S, dim/2]`` and cos/sin scales ``[*S]`` (float32) of a static rule.

  ``factor`` is ``s`` (``≥ 1``), of any shape ``S`` and possibly traced (one ``s`` per
  sequence); the rules are those of :func:`scaled_frequencies`. NTK is computed as
  ``θ_m·s^{−2m/(d−2)}``, which equals ``(base·s^{d/(d−2)})^{−2m/d}`` and leaves ``θ``
  exact at ``s = 1``.
  """
  _check_dim(dim)
  if scaling not in SCALINGS or scaling == "dynamic_ntk":
    raise ValueError(f"static scaling must be one of none, linear, ntk, yarn; got {scaling!r} "
                     "(dynamic_ntk: use dynamic_ntk_frequencies)")
  theta = jnp.asarray(_np_frequencies(dim, base), jnp.float32)
  s = jnp.asarray(factor, jnp.float32)
  ones = jnp.ones(s.shape, jnp.float32)
  if scaling == "none":
    return jnp.broadcast_to(theta, (*s.shape, dim // 2)), ones
  if scaling == "linear":
    return theta / s[..., None], ones
  if scaling == "ntk":
    return _ntk(theta, s, dim), ones
  if original_length <= 0:
    raise ValueError("yarn needs the original (training) length")
  low, high = yarn_correction_range(dim, base, original_length, beta_fast, beta_slow)
  if low == high:
    high += 0.001  # as the reference code: avoid a zero-width ramp
  ramp = jnp.asarray(np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0),
                     jnp.float32)
  out = theta / s[..., None] * ramp + theta * (1.0 - ramp)
  return out, jnp.where(s > 1, 0.1 * jnp.log(jnp.maximum(s, 1.0)) + 1.0, 1.0)


def _ntk(theta: jax.Array, s: jax.Array, dim: int) -> jax.Array:
  """``θ_m·s^{−2m/(d−2)}`` for ``s [*S]``: the frequencies of the base ``base·s^{d/(d−2)}``."""
  exponents = -jnp.arange(0, dim, 2, dtype=jnp.float32) / (dim - 2)
  return theta * s[..., None] ** exponents


def scaled_frequencies(dim: int, *, base: float = 10000.0, scaling: str = "none", factor: float = 1.0,
                       original_length: int = 0, beta_fast: float = 32.0,
                       beta_slow: float = 1.0) -> tuple[jax.Array, float]:
  """Frequencies ``[dim/2]`` (float32) and the cos/sin scale of a static extension rule.

  * ``none``: ``θ``, scale 1.
  * ``linear`` (position interpolation, Chen et al. 2023): ``θ/s``.
  * ``ntk`` (bloc97): ``θ`` from ``base·s^{d/(d−2)}`` — the lowest frequency
    becomes exactly ``θ_{d/2−1}/s``, the highest stays.
  * ``yarn`` (Peng et al. 2023): per pair ``θ_m/s·ramp_m + θ_m·(1 − ramp_m)``
    with ``ramp_m = clip((m − low)/(high − low), 0, 1)`` over
    :func:`yarn_correction_range` (fast pairs keep θ, slow pairs get θ/s), and
    scale :func:`yarn_attention_factor`.

  ``factor`` is one ``s`` (a number; :func:`extended_frequencies` takes one per sequence);
  ``original_length`` is ``L`` (used by ``yarn`` only).
  """
  theta, _ = extended_frequencies(dim, float(factor), base=base, scaling=scaling,
                                  original_length=original_length, beta_fast=beta_fast,
                                  beta_slow=beta_slow)
  return theta, (yarn_attention_factor(float(factor)) if scaling == "yarn" else 1.0)


def dynamic_ntk_frequencies(dim: int, length: jax.Array, *, base: float = 10000.0,
                            original_length: int, factor: float = 1.0) -> jax.Array:
  """Dynamic NTK (emozilla; HF ``_compute_dynamic_ntk_parameters``) for current ``length``.

  ``base' = base·(α·L'/L − (α − 1))^{d/(d−2)}`` with ``L' = max(length, L)``, i.e. NTK with
  ``s = α·L'/L − (α − 1)`` (exactly θ for ``length ≤ L``); ``length`` may be traced, of
  any shape ``S``; returns ``[*S, dim/2]`` float32.
  """
  _check_dim(dim)
  cur = jnp.asarray(length, jnp.float32)
  s = jnp.where(cur > original_length, factor * cur / original_length - (factor - 1.0), 1.0)
  return _ntk(jnp.asarray(_np_frequencies(dim, base), jnp.float32), s, dim)


def rotate_pairs(x: jax.Array, cos: jax.Array, sin: jax.Array, pairing: str) -> jax.Array:
  """Rotates pair ``m`` of ``x [..., d]`` by ``(cos, sin)[..., m]`` (float32 math, ``x``'s dtype out)."""
  xf = x.astype(jnp.float32)
  d = x.shape[-1]
  if pairing == "interleaved":
    a, b = xf[..., 0::2], xf[..., 1::2]
    out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(xf.shape)
  elif pairing == "half":
    a, b = xf[..., : d // 2], xf[..., d // 2:]
    out = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
  else:
    raise ValueError(f"unknown pairing {pairing!r}; choose one of {PAIRINGS}")
  return out.astype(x.dtype)


def rotate(x: jax.Array, positions: jax.Array, *, base: float = 10000.0, pairing: str = "interleaved",
           inv_freq: jax.Array | None = None, scale: float = 1.0) -> jax.Array:
  """RoPE: turns channel pair ``m`` of ``x [..., L, d]`` by ``positions[..., L]·θ_m``.

  ``inv_freq`` (``[d/2]``, or broadcastable to ``[..., L, d/2]``) replaces
  :func:`frequencies` (e.g. from :func:`scaled_frequencies`); ``scale``
  multiplies cos and sin (YaRN's attention factor). Positions are used in
  float32.
  """
  d = x.shape[-1]
  _check_dim(d)
  theta = frequencies(d, base) if inv_freq is None else jnp.asarray(inv_freq, jnp.float32)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * theta
  return rotate_pairs(x, scale * jnp.cos(angles), scale * jnp.sin(angles), pairing)


class Encoding(_Base):
  """Rotates q and k by their positions in every layer (see the module docstring)."""

  PROJECT_CONTEXT = True  # the whole sequence's positions ...
  PROJECT_VALID = True    # ... and its real tokens: each sequence's own length L'

  base: float = 10000.0
  pairing: str = "interleaved"      # or "half" (GPT-NeoX / Llama)
  scaling: str = "none"             # sequences longer than L: linear | ntk | dynamic_ntk | yarn
  factor: float = 0.0               # s (α for dynamic_ntk); 0: s = L'/L, per sequence
  original_length: int = 0          # L; 0: dims.train_length
  beta_fast: float = 32.0           # YaRN ramp bounds (rotations within L)
  beta_slow: float = 1.0

  def check(self, max_position):
    if self.pairing not in PAIRINGS:
      raise ConfigError("config.encoding.pairing",
                        f"unknown pairing {self.pairing!r}; choose one of {', '.join(PAIRINGS)}")
    if self.scaling not in SCALINGS:
      raise ConfigError("config.encoding.scaling",
                        f"unknown scaling {self.scaling!r}; choose one of {', '.join(SCALINGS)}")
    if self.base <= 1:
      raise ConfigError("config.encoding.base", f"must be > 1, got {self.base}")
    if self.factor != 0 and self.factor < 1:
      raise ConfigError("config.encoding.factor",
                        f"must be >= 1 (or 0: s = each sequence's length / the training length), "
                        f"got {self.factor}")
    if self.original_length < 0:
      raise ConfigError("config.encoding.original_length",
                        f"must be >= 0 (0: the training length), got {self.original_length}")
    if self.scaling != "none" and self._original_length() <= 0:
      raise ConfigError("config.encoding.original_length",
                        f"scaling={self.scaling!r} needs the original training length; set "
                        "--config.encoding.original_length")
    if self.scaling == "yarn" and not self.beta_fast > self.beta_slow > 0:
      raise ConfigError("config.encoding.beta_fast",
                        f"YaRN needs beta_fast > beta_slow > 0, got {self.beta_fast} and {self.beta_slow}")
    if self.scaling == "ntk" and self.dims.head_dim <= 2:
      raise ConfigError("config.model.num_heads", "ntk scaling needs a head width above 2")

  def _original_length(self) -> int:
    return self.original_length or self.dims.train_length

  def sequence_frequencies(self, length) -> tuple[jax.Array, jax.Array]:
    """Frequencies ``[*S, Dh/2]`` and cos/sin scales ``[*S]`` of sequences of length ``length``
    (``L'``, any shape ``S``, may be traced): exactly ``θ`` and 1 where ``L' ≤ L``."""
    d, L = self.dims.head_dim, self._original_length()
    length = jnp.asarray(length, jnp.float32)
    theta = jnp.broadcast_to(frequencies(d, self.base), (*length.shape, d // 2))
    ones = jnp.ones(length.shape, jnp.float32)
    if self.scaling == "none":
      return theta, ones
    beyond = length > L
    if self.scaling == "dynamic_ntk":
      scaled = dynamic_ntk_frequencies(d, length, base=self.base, original_length=L,
                                       factor=self.factor or 1.0)
      scale = ones
    else:
      s = jnp.where(beyond, self.factor or length / L, 1.0)
      scaled, scale = extended_frequencies(d, s, base=self.base, scaling=self.scaling,
                                           original_length=L, beta_fast=self.beta_fast,
                                           beta_slow=self.beta_slow)
    return jnp.where(beyond[..., None], scaled, theta), jnp.where(beyond, scale, 1.0)

  def static_frequencies(self) -> tuple[jax.Array, jax.Array]:
    """Frequencies and cos/sin scale of a sequence that fills this program's bound
    (``L' = dims.max_position``): those of the longest sequence the program can hold."""
    return self.sequence_frequencies(self.dims.max_position)

  @staticmethod
  def sequence_length(context: jax.Array, valid: jax.Array) -> jax.Array:
    """``L'`` per row ``[B]`` (float32): one past the largest position of its real tokens
    (``context [B|1, L]`` positions, ``valid [B|1, L]``); 0 for a row without any."""
    last = jnp.max(jnp.where(valid, context, -1), axis=-1)
    return last.astype(jnp.float32) + 1.0

  def _cos_sin(self, positions, theta, scale):
    """cos, sin ``[B|1, L, 1, Dh/2]`` (broadcast over heads) for positions ``[B|1, L]`` and
    each row's frequencies ``theta [B|1, Dh/2]`` and scale ``[B|1]``."""
    angles = positions.astype(jnp.float32)[..., None] * theta[:, None, :]
    scale = scale[:, None, None, None]
    return scale * jnp.cos(angles)[:, :, None, :], scale * jnp.sin(angles)[:, :, None, :]

  def project(self, q, k, v, q_pos, k_pos, layer, context=None, valid=None):
    """``context``: the whole sequence's positions (default ``k_pos``); ``valid``: its real
    tokens (default all), from which each row's ``L'`` is read."""
    del layer
    if self.scaling == "none":
      theta, scale = frequencies(self.dims.head_dim, self.base)[None], jnp.ones((1,), jnp.float32)
    else:
      context = k_pos if context is None else context
      valid = jnp.ones(context.shape, bool) if valid is None else valid
      theta, scale = self.sequence_frequencies(self.sequence_length(context, valid))
    cq, sq = self._cos_sin(q_pos, theta, scale)
    ck, sk = (cq, sq) if k_pos is q_pos else self._cos_sin(k_pos, theta, scale)
    return (rotate_pairs(q, cq, sq, self.pairing), rotate_pairs(k, ck, sk, self.pairing), v)
