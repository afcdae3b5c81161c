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

Context extension happens only at evaluation, when a compiled program's
positions go beyond the training program's. With ``L`` the original length
(``encoding.original_length``, by default ``dims.train_length``, the longest
training sequence):

* the training program's position bound is ``L`` rounded up to a multiple of 8
  (``posenc.data.buckets`` pads every program so), call it ``L₈``;
* ``linear``, ``ntk`` and ``yarn`` are applied to a program iff its static
  bound ``dims.max_position > L₈``, with ``s = encoding.factor`` or, when that
  is 0, ``s = dims.max_position / L`` (the evaluated bucket's padded length over
  the training length). Every length of that evaluation bucket shares ``s``;
* ``dynamic_ntk`` reads the current length from the positions themselves:
  ``L' = max(positions of the sequence) + 1`` (padding positions included, so
  with contiguous positions ``L'`` is the bucket's padded length), applied
  iff ``L' > L₈``, with HF's rule
  ``base' = base·(α·L'/L − (α − 1))^{d/(d−2)}``, ``α = encoding.factor`` (0 →
  1, which is plain NTK with ``s = L'/L``).

With randomized positions or position offsets, training positions already reach
past ``L`` (up to ``positions.max_position``, or ``L + offset``): set
``encoding.original_length`` to that training bound, so that training is never
rescaled and ``s`` is measured against the positions the model has seen.
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
# posenc.data.buckets rounds every program's length up to this multiple.
PAD_MULTIPLE = 8


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

  ``factor`` is ``s``; ``original_length`` is ``L`` (used by ``yarn`` only).
  """
  _check_dim(dim)
  if scaling not in SCALINGS or scaling == "dynamic_ntk":
    raise ValueError(f"scaled_frequencies: static scaling must be one of none, linear, ntk, yarn; "
                     f"got {scaling!r} (dynamic_ntk: use dynamic_ntk_frequencies)")
  theta = _np_frequencies(dim, base)
  s = float(factor)
  attention = 1.0
  if scaling == "linear":
    theta = theta / s
  elif scaling == "ntk":
    theta = _np_frequencies(dim, base * s ** (dim / (dim - 2)))
  elif scaling == "yarn":
    if original_length <= 0:
      raise ValueError("yarn needs the original (training) length")
    low, high = yarn_correction_range(dim, base, original_length, beta_fast, beta_slow)
    if low == high:
      high += 0.001  # as the reference code: avoid a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    theta = theta / s * ramp + theta * (1.0 - ramp)
    attention = yarn_attention_factor(s)
  return jnp.asarray(theta, jnp.float32), attention


def dynamic_ntk_frequencies(dim: int, length: jax.Array, *, base: float = 10000.0,
                            original_length: int, factor: float = 1.0) -> jax.Array:
  """Dynamic NTK (emozilla; HF ``_compute_dynamic_ntk_parameters``) for current ``length``.

  ``base' = base·(α·L'/L − (α − 1))^{d/(d−2)}`` with ``L' = max(length, L)``;
  ``length`` may be traced, of any shape ``S``; returns ``[*S, dim/2]`` float32.
  """
  _check_dim(dim)
  cur = jnp.maximum(jnp.asarray(length, jnp.float32), float(original_length))
  new_base = base * (factor * cur / original_length - (factor - 1.0)) ** (dim / (dim - 2))
  exponents = jnp.arange(0, dim, 2, dtype=jnp.float32) / dim
  return new_base[..., None] ** -exponents


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

  base: float = 10000.0
  pairing: str = "interleaved"      # or "half" (GPT-NeoX / Llama)
  scaling: str = "none"             # evaluation only: linear | ntk | dynamic_ntk | yarn
  factor: float = 0.0               # s (α for dynamic_ntk); 0: derived from the evaluated length
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
                        f"must be >= 1 (or 0 to derive s = evaluated length / training length), "
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

  def _training_bound(self) -> int:
    """The position bound of the program that trained on ``L`` tokens (``L`` padded)."""
    length = self._original_length()
    return -(-length // PAD_MULTIPLE) * PAD_MULTIPLE

  def static_frequencies(self) -> tuple[jax.Array, float]:
    """Frequencies and cos/sin scale for this program (scaled only beyond the training bound)."""
    d = self.dims.head_dim
    if self.scaling in ("none", "dynamic_ntk") or self.dims.max_position <= self._training_bound():
      return frequencies(d, self.base), 1.0
    s = self.factor or self.dims.max_position / self._original_length()
    return scaled_frequencies(d, base=self.base, scaling=self.scaling, factor=s,
                              original_length=self._original_length(),
                              beta_fast=self.beta_fast, beta_slow=self.beta_slow)

  def _cos_sin(self, positions):
    """cos, sin ``[B|1, L, 1, Dh/2]`` (broadcast over heads) for positions ``[B|1, L]``."""
    pos = positions.astype(jnp.float32)
    if self.scaling == "dynamic_ntk":
      current = jnp.max(pos, axis=-1) + 1.0  # [B|1]
      current = jnp.where(current > self._training_bound(), current, float(self._original_length()))
      theta = dynamic_ntk_frequencies(self.dims.head_dim, current, base=self.base,
                                      original_length=self._original_length(),
                                      factor=self.factor or 1.0)[:, None, :]  # [B|1, 1, Dh/2]
      scale = 1.0
    else:
      theta, scale = self.static_frequencies()
    angles = (pos[..., None] * theta)[:, :, None, :]
    return scale * jnp.cos(angles), scale * jnp.sin(angles)

  def project(self, q, k, v, q_pos, k_pos, layer):
    del layer
    cq, sq = self._cos_sin(q_pos)
    ck, sk = (cq, sq) if k_pos is q_pos else self._cos_sin(k_pos)
    return (rotate_pairs(q, cq, sq, self.pairing), rotate_pairs(k, ck, sk, self.pairing), v)
