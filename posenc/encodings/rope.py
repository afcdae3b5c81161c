"""Rotary position embedding, RoPE (Su et al., "RoFormer", 2021), with context extension.

Public math:

* :func:`frequencies` — ``θ_m = base^(−2m/d)`` for ``m = 0 .. d/2 − 1``.
* :func:`rotate` — turns channel pair ``m`` of ``x [..., L, d]`` by the angle
  ``pos·θ_m``. Pairing ``"interleaved"`` (default) rotates channels
  ``(2m, 2m+1)`` as RoFormer does; ``"half"`` rotates ``(m, m + d/2)`` as
  GPT-NeoX and Llama do (checkpoints differ by that permutation). A pair
  ``(a, b)`` becomes ``(a·cos − b·sin, a·sin + b·cos)``.
* :func:`scaled_frequencies` — the static context-extension rules
  (``linear``, ``ntk``, ``yarn``, ``llama3``) and :func:`dynamic_ntk_frequencies`, with the
  formulas of HF ``transformers`` (``modeling_rope_utils``) and of the YaRN
  authors' code (``jquesnelle/yarn``, ``scaled_rope/LlamaYaRNScaledRotaryEmbedding.py``);
  :func:`llama3_frequencies` (Llama 3.1) and :func:`longrope_frequencies` with
  :func:`longrope_attention_factor` (LongRoPE / Phi-3), as HF's
  ``_compute_llama3_parameters`` and ``_compute_longrope_parameters``.

HF's ``rope_scaling`` vocabulary maps onto ``encoding.*`` with the same parameter names:
``rope_type`` → ``scaling`` (HF ``"dynamic"`` is ``dynamic_ntk`` here; ``ntk`` is the static
NTK-aware base ``base·s^{d/(d−2)}``, HF's ``_compute_ntk_parameters`` in the versions that had a
static ``"ntk"`` type), ``factor``, ``beta_fast``/``beta_slow`` (yarn), ``low_freq_factor``/
``high_freq_factor`` (llama3), ``short_factor``/``long_factor``/``attention_factor``
(longrope; ``attention_factor`` also overrides yarn's), ``rope_theta`` → ``base``; HF's
``original_max_position_embeddings`` is ``original_length`` (``L`` below). Not carried over:
yarn's ``mscale``/``mscale_all_dim`` and ``truncate`` (HF's default, truncation, is what is
computed), ``partial_rotary_factor``.

Properties (tested): ``rotate(q, a)·rotate(k, b)`` depends only on ``a − b``;
norms are preserved; the two pairings agree up to a channel permutation.

The module rotates q and k (never v) in every layer; it has no parameters.

Context extension (``encoding.scaling``). ``L`` is the original length
(``encoding.original_length``, by default ``dims.train_length``, the longest training sequence:
input plus answer); ``s`` is ``encoding.factor``; ``L'`` is a sequence's own length.

**HF's names compute what HF computes.** ``linear``, ``ntk``, ``yarn`` and ``llama3`` are
static, as in HF: the frequencies and the cos/sin scale are computed once, from ``s`` and ``L``,
and used at every length, in range (training included, if the rule is set for training) and
beyond:

* ``linear`` (position interpolation): ``θ/s``, scale 1.
* ``ntk``: ``θ`` of the base ``base·s^{d/(d−2)}``, scale 1.
* ``yarn``: the per-pair ramp between ``θ`` and ``θ/s`` set by ``beta_fast``, ``beta_slow`` and
  ``L``; scale ``attention_factor``, or (0) ``0.1·ln s + 1``.
* ``llama3``: per pair by its wavelength ``λ_m = 2π/θ_m``: ``θ`` where ``λ < L/high_freq_factor``,
  ``θ/s`` where ``λ > L/low_freq_factor``, a smooth mix between; scale 1.

  These need ``s ≥ 1`` (HF requires its ``factor``): ``factor = 0`` is refused before any
  compute (``config.encoding.factor``; the message gives this run's longest sequence over
  ``L`` as the factor to set) — a static rule has no length of its own to take ``s`` from.
* ``longrope`` (HF): the frequencies are ``θ_m/short_factor[m]`` for a sequence with ``L' ≤ L``
  and ``θ_m/long_factor[m]`` for one with ``L' > L`` — the one length-dependent choice HF makes
  (its ``longrope_frequency_update`` compares ``max(position_ids) + 1`` with
  ``original_max_position_embeddings`` in each forward call; here each sequence's own ``L'``, so
  that padding and batching never change a row) — and cos and sin are scaled by one constant:
  ``attention_factor``, or (0) ``sqrt(1 + ln s/ln L)`` (1 where ``s ≤ 1``; HF's ``factor``, for
  Phi-3 ``max_position_embeddings / original_max_position_embeddings``), at every length.
  ``factor = 0`` is refused unless ``attention_factor`` is set.

**Per sequence, not HF's rules**: ``linear_per_sequence``, ``ntk_per_sequence``,
``yarn_per_sequence``, ``llama3_per_sequence`` and ``longrope_per_sequence`` keep posenc's
earlier behaviour, decided by each sequence's own length:

* a sequence with ``L' ≤ L`` is rotated exactly as without scaling (``longrope_per_sequence``:
  ``θ/short_factor``, scaled as below with ``s = factor``, 1 when ``factor = 0``);
* one with ``L' > L`` gets the rule with ``s = factor``, or, when ``factor = 0``, ``s = L'/L``,
  so every sequence of an evaluation gets its own ``s`` (reverse_string trained on inputs up to
  16, ``L = 32``: an input of 23 is ``L' = 46`` tokens with its answer, ``s = 46/32 ≈ 1.44``);
  ``longrope_per_sequence`` scales cos/sin by ``attention_factor`` or ``sqrt(1 + ln s/ln L)``
  with that ``s`` (with ``L = 32``: 1 in range, 1.095 at ``2L``, 1.183 at ``4L``).

``dynamic_ntk`` is dynamic in HF too (its ``"dynamic"``): ``base' = base·(α·L'/L − (α −
1))^{d/(d−2)}`` with the sequence's ``L'`` as the current length (``θ`` for ``L' ≤ L``),
``α = encoding.factor`` (0 → 1, which is plain NTK with ``s = L'/L``).

Where a rule depends on ``L'`` (``longrope``, the ``*_per_sequence`` rules, ``dynamic_ntk``),
``L'`` is one past the largest position among the row's real tokens (``valid``; the hook asks
for it and for the whole sequence's positions, ``PROJECT_VALID`` and ``PROJECT_CONTEXT``),
never the padded length of the evaluation bucket it is batched in. With contiguous positions
from 0 that is the number of real tokens (in the encoder transducer: the input plus the answer
slots; in a decoder: the prompt, SEP and the answer). Padding slots, whatever positions they
hold, never count. In greedy decoding (``posenc.decoding``) the current length is the same
``L'`` in the prefill and in every step (the buffer's real tokens: prompt plus answer slots),
so the cached keys and each new query are rotated as in the full forward pass.

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

# HF's rope_type names: static (longrope: its short/long choice by length, as HF) ...
HF_RULES = ("linear", "ntk", "yarn", "llama3", "longrope")
# ... and posenc's earlier per-sequence variants of them (not HF's rules; module docstring).
PER_SEQUENCE = "_per_sequence"
SCALINGS = ("none", "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope",
            *(rule + PER_SEQUENCE for rule in HF_RULES))
_STATIC = ("linear", "ntk", "yarn", "llama3")  # one θ and scale at every length
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
                         beta_slow: float = 1.0, low_freq_factor: float = 1.0,
                         high_freq_factor: float = 4.0) -> tuple[jax.Array, jax.Array]:
  """Frequencies ``[*S, dim/2]`` and cos/sin scales ``[*S]`` (float32) of a static rule.

  ``factor`` is ``s`` (``≥ 1``), of any shape ``S`` and possibly traced (one ``s`` per
  sequence); the rules are those of :func:`scaled_frequencies`. NTK is computed as
  ``θ_m·s^{−2m/(d−2)}``, which equals ``(base·s^{d/(d−2)})^{−2m/d}`` and leaves ``θ``
  exact at ``s = 1``.
  """
  _check_dim(dim)
  if scaling not in ("none", *_STATIC):
    raise ValueError(f"static scaling must be one of none, linear, ntk, yarn, llama3; got "
                     f"{scaling!r} (dynamic_ntk: use dynamic_ntk_frequencies; longrope: "
                     "longrope_frequencies)")
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
    raise ValueError(f"{scaling} needs the original (training) length")
  if scaling == "llama3":
    return llama3_frequencies(dim, s, base=base, original_length=original_length,
                              low_freq_factor=low_freq_factor,
                              high_freq_factor=high_freq_factor), ones
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
                       beta_slow: float = 1.0, low_freq_factor: float = 1.0,
                       high_freq_factor: float = 4.0) -> tuple[jax.Array, float]:
  """Frequencies ``[dim/2]`` (float32) and the cos/sin scale of a static extension rule.

  * ``none``: ``θ``, scale 1.
  * ``linear`` (position interpolation, Chen et al. 2023): ``θ/s``.
  * ``ntk`` (bloc97): ``θ`` from ``base·s^{d/(d−2)}`` — the lowest frequency
    becomes exactly ``θ_{d/2−1}/s``, the highest stays.
  * ``yarn`` (Peng et al. 2023): per pair ``θ_m/s·ramp_m + θ_m·(1 − ramp_m)``
    with ``ramp_m = clip((m − low)/(high − low), 0, 1)`` over
    :func:`yarn_correction_range` (fast pairs keep θ, slow pairs get θ/s), and
    scale :func:`yarn_attention_factor`.
  * ``llama3`` (Llama 3.1): :func:`llama3_frequencies`, scale 1.

  ``factor`` is one ``s`` (a number; :func:`extended_frequencies` takes one per sequence);
  ``original_length`` is ``L`` (used by ``yarn`` and ``llama3``).
  """
  theta, _ = extended_frequencies(dim, float(factor), base=base, scaling=scaling,
                                  original_length=original_length, beta_fast=beta_fast,
                                  beta_slow=beta_slow, low_freq_factor=low_freq_factor,
                                  high_freq_factor=high_freq_factor)
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


def llama3_frequencies(dim: int, factor, *, base: float = 10000.0, original_length: int,
                       low_freq_factor: float = 1.0, high_freq_factor: float = 4.0) -> jax.Array:
  """Llama 3.1's per-pair rule (HF ``_compute_llama3_parameters``; Meta's ``apply_scaling``).

  With ``λ_m = 2π/θ_m``, ``L = original_length`` (HF ``original_max_position_embeddings``,
  8192 for Llama 3.1) and ``s = factor`` (8 there): ``θ_m`` where ``λ_m < L/high_freq_factor``
  (4), ``θ_m/s`` where ``λ_m > L/low_freq_factor`` (1), otherwise
  ``(1 − γ_m)·θ_m/s + γ_m·θ_m`` with ``γ_m = (L/λ_m − low_freq_factor)/(high_freq_factor −
  low_freq_factor)``. ``factor`` may be traced, of any shape ``S``; returns ``[*S, dim/2]``
  float32 (exactly ``θ`` at ``s = 1`` up to rounding). Needs ``high_freq_factor >
  low_freq_factor > 0``.
  """
  _check_dim(dim)
  if not high_freq_factor > low_freq_factor > 0:
    raise ValueError(f"llama3 needs high_freq_factor > low_freq_factor > 0, got "
                     f"{high_freq_factor} and {low_freq_factor}")
  theta = _np_frequencies(dim, base)
  wavelength = 2 * math.pi / theta
  gamma = (original_length / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
  # The weight of θ against θ/s: 1 for the fast pairs, 0 for the slow ones, γ between.
  keep = np.where(wavelength < original_length / high_freq_factor, 1.0,
                  np.where(wavelength > original_length / low_freq_factor, 0.0, gamma))
  s = jnp.asarray(factor, jnp.float32)[..., None]
  keep, theta = jnp.asarray(keep, jnp.float32), jnp.asarray(theta, jnp.float32)
  return keep * theta + (1.0 - keep) * theta / s


def longrope_frequencies(dim: int, ext_factors, *, base: float = 10000.0) -> jax.Array:
  """LongRoPE (Ding et al. 2024; HF ``_compute_longrope_parameters``): ``θ_m / ext_m``.

  ``ext_factors [..., dim/2]``: HF's ``short_factor`` (sequences within the original
  length) or ``long_factor`` (beyond it), one rescale factor per pair. Returns float32
  ``[..., dim/2]``.
  """
  _check_dim(dim)
  theta = jnp.asarray(_np_frequencies(dim, base), jnp.float32)
  return theta / jnp.asarray(ext_factors, jnp.float32)


def longrope_attention_factor(factor, original_length: int):
  """LongRoPE's cos/sin scale: ``sqrt(1 + ln s / ln L)``, 1 where ``s ≤ 1`` (HF's default when
  ``attention_factor`` is unset; ``s = factor``, ``L = original_max_position_embeddings``).
  ``factor`` may be an array (float32 result) or a number (float result)."""
  if isinstance(factor, (int, float)):
    return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original_length))
  s = jnp.asarray(factor, jnp.float32)
  return jnp.where(s > 1, jnp.sqrt(1 + jnp.log(jnp.maximum(s, 1.0)) / math.log(original_length)),
                   1.0)


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
  scaling: str = "none"             # SCALINGS: HF's static rules, dynamic_ntk, *_per_sequence
  factor: float = 0.0               # s (α for dynamic_ntk); 0: only *_per_sequence (s = L'/L),
                                    # dynamic_ntk (α = 1), longrope with attention_factor
  original_length: int = 0          # L; 0: dims.train_length
  beta_fast: float = 32.0           # YaRN ramp bounds (rotations within L)
  beta_slow: float = 1.0
  low_freq_factor: float = 1.0      # llama3: pairs with wavelength > L/low_freq_factor get θ/s
  high_freq_factor: float = 4.0     # llama3: pairs with wavelength < L/high_freq_factor keep θ
  short_factor: tuple = ()          # longrope: θ_m/short_factor[m] within L (() = all 1)
  long_factor: tuple = ()           # longrope: θ_m/long_factor[m] beyond L (d_h/2 numbers)
  attention_factor: float = 0.0     # longrope and yarn: cos/sin scale; 0: the rule's default

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
                        f"must be >= 1 (or 0 where the rule allows it), got {self.factor}")
    if self.original_length < 0:
      raise ConfigError("config.encoding.original_length",
                        f"must be >= 0 (0: the training length), got {self.original_length}")
    if self.scaling != "none" and self._original_length() <= 0:
      raise ConfigError("config.encoding.original_length",
                        f"scaling={self.scaling!r} needs the original training length; set "
                        "--config.encoding.original_length")
    rule, per_sequence = self._rule()
    if rule == "yarn" and not self.beta_fast > self.beta_slow > 0:
      raise ConfigError("config.encoding.beta_fast",
                        f"YaRN needs beta_fast > beta_slow > 0, got {self.beta_fast} and {self.beta_slow}")
    if rule == "ntk" and self.dims.head_dim <= 2:
      raise ConfigError("config.model.num_heads", "ntk scaling needs a head width above 2")
    if rule == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
      raise ConfigError("config.encoding.high_freq_factor",
                        f"llama3 needs high_freq_factor > low_freq_factor > 0, got "
                        f"{self.high_freq_factor} and {self.low_freq_factor} (HF's defaults: 4 and 1)")
    if self.attention_factor < 0:
      raise ConfigError("config.encoding.attention_factor",
                        f"must be >= 0 (0: the rule's own default), got {self.attention_factor}")
    if rule == "longrope":
      half = self.dims.head_dim // 2
      for name, values, required in (("long_factor", self.long_factor, True),
                                     ("short_factor", self.short_factor, False)):
        values = tuple(values)
        if not values and not required:
          continue
        if len(values) != half or not all(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values):
          raise ConfigError(f"config.encoding.{name}",
                            f"longrope needs {half} positive numbers (one per rotary pair, d_h/2), "
                            f"got {values!r}; e.g. --config.encoding.{name}=\"{(1.0,) * half}\"")
    if not per_sequence and self.factor == 0 and (
        rule in _STATIC or (rule == "longrope" and not self.attention_factor)):
      L = self._original_length()
      example = (f"--config.encoding.factor={max(1.0, max_position / L):g} (this run's longest "
                 f"sequence, {max_position} positions, over original_length {L})")
      per_sequence_fix = (f"or --config.encoding.scaling={rule}{PER_SEQUENCE} to take s from each "
                          "sequence's own length (posenc's per-sequence rule, not HF's)")
      if rule == "longrope":
        raise ConfigError(
            "config.encoding.factor",
            "scaling='longrope' scales cos and sin by one constant at every length, as Hugging "
            "Face does: attention_factor, or sqrt(1 + ln s / ln original_length) from the factor "
            "s (HF's rope_scaling 'factor'), and both are 0; set " + example +
            ", or --config.encoding.attention_factor=A, " + per_sequence_fix)
      raise ConfigError(
          "config.encoding.factor",
          f"scaling={rule!r} is Hugging Face's static rule: its frequencies come from one factor "
          "s (HF's rope_scaling 'factor', required there too) and apply at every length, so it "
          "needs factor >= 1, not 0; set " + example + ", " + per_sequence_fix +
          " and rescale only sequences longer than original_length")

  def _original_length(self) -> int:
    return self.original_length or self.dims.train_length

  def _rule(self) -> tuple[str, bool]:
    """``(rule, per_sequence)``: ``"yarn_per_sequence"`` is ``("yarn", True)``."""
    if self.scaling.endswith(PER_SEQUENCE):
      return self.scaling[:-len(PER_SEQUENCE)], True
    return self.scaling, False

  def _length_free(self) -> bool:
    """Whether every sequence gets the same frequencies and scale (none, HF's static rules)."""
    rule, per_sequence = self._rule()
    return rule == "none" or (rule in _STATIC and not per_sequence)

  def _static(self) -> tuple[jax.Array, jax.Array]:
    """Frequencies ``[Dh/2]`` and cos/sin scale ``[]`` of HF's static rule, for ``s = factor``."""
    d, L = self.dims.head_dim, self._original_length()
    rule, _ = self._rule()
    if rule == "none":
      return frequencies(d, self.base), jnp.ones((), jnp.float32)
    theta, scale = extended_frequencies(d, float(self.factor), base=self.base, scaling=rule,
                                        original_length=L, beta_fast=self.beta_fast,
                                        beta_slow=self.beta_slow,
                                        low_freq_factor=self.low_freq_factor,
                                        high_freq_factor=self.high_freq_factor)
    if self.attention_factor and rule == "yarn":
      scale = jnp.asarray(self.attention_factor, jnp.float32)
    return theta, scale

  def sequence_frequencies(self, length) -> tuple[jax.Array, jax.Array]:
    """Frequencies ``[*S, Dh/2]`` and cos/sin scales ``[*S]`` of sequences of length ``length``
    (``L'``, any shape ``S``, may be traced): the same for every ``L'`` under HF's static rules;
    ``longrope`` picks short or long factors by ``L'``; the ``*_per_sequence`` rules and
    ``dynamic_ntk`` give exactly ``θ`` and 1 where ``L' ≤ L`` (``longrope_per_sequence``:
    ``θ/short_factor``) and rescale by ``L'`` beyond (module docstring)."""
    d, L = self.dims.head_dim, self._original_length()
    length = jnp.asarray(length, jnp.float32)
    ones = jnp.ones(length.shape, jnp.float32)
    if self._length_free():
      theta, scale = self._static()
      return jnp.broadcast_to(theta, (*length.shape, d // 2)), scale * ones
    rule, per_sequence = self._rule()
    theta = jnp.broadcast_to(frequencies(d, self.base), (*length.shape, d // 2))
    beyond = length > L
    if rule == "longrope":
      factors = lambda values: jnp.asarray(tuple(values) or (1.0,) * (d // 2), jnp.float32)
      ext = jnp.where(beyond[..., None], factors(self.long_factor), factors(self.short_factor))
      if self.attention_factor:
        scale = self.attention_factor * ones
      elif per_sequence:
        s = self.factor or jnp.maximum(length / L, 1.0)
        scale = longrope_attention_factor(s * ones, L)
      else:  # HF: one constant, from the configured factor
        scale = longrope_attention_factor(float(self.factor), L) * ones
      return longrope_frequencies(d, ext, base=self.base), scale
    if rule == "dynamic_ntk":
      scaled = dynamic_ntk_frequencies(d, length, base=self.base, original_length=L,
                                       factor=self.factor or 1.0)
      scale = ones
    else:
      s = jnp.where(beyond, self.factor or length / L, 1.0)
      scaled, scale = extended_frequencies(d, s, base=self.base, scaling=rule,
                                           original_length=L, beta_fast=self.beta_fast,
                                           beta_slow=self.beta_slow,
                                           low_freq_factor=self.low_freq_factor,
                                           high_freq_factor=self.high_freq_factor)
      if self.attention_factor and rule == "yarn":
        scale = self.attention_factor * ones
    return jnp.where(beyond[..., None], scaled, theta), jnp.where(beyond, scale, 1.0)

  def static_frequencies(self) -> tuple[jax.Array, jax.Array]:
    """Frequencies and cos/sin scale of a sequence that fills this program's bound
    (``L' = dims.max_position``): those of the longest sequence the program can hold (under
    HF's static rules, those of every sequence)."""
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
    if self._length_free():
      theta, scale = self._static()
      theta, scale = theta[None], scale[None]
    else:
      context = k_pos if context is None else context
      valid = jnp.ones(context.shape, bool) if valid is None else valid
      theta, scale = self.sequence_frequencies(self.sequence_length(context, valid))
    cq, sq = self._cos_sin(q_pos, theta, scale)
    ck, sk = (cq, sq) if k_pos is q_pos else self._cos_sin(k_pos, theta, scale)
    return (rotate_pairs(q, cq, sq, self.pairing), rotate_pairs(k, ck, sk, self.pairing), v)
