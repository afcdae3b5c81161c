"""xPos (Sun et al., 2022, "A Length-Extrapolatable Transformer"): RoPE with a per-pair decay.

Queries and keys are rotated as in RoPE (interleaved pairs ``(2m, 2m+1)``,
``θ_m = 10000^(−2m/d)``) after an exponential rescaling of each pair:

  ``q̃_n = R(n)(q ⊙ ζ^{(n−c)/γ})``,  ``k̃_n = R(n)(k ⊙ ζ^{−(n−c)/γ})``,
  ``ζ_m = (2m + 0.4·d)/(1.4·d)`` (< 1),  ``γ = 512`` (``scale_base``).

so the logit of query ``i`` and key ``j`` is RoPE's pair term times
``ζ_m^{(i−j)/γ}``: it depends on the offset only, and decays with distance for
``j ≤ i``. The centre ``c`` cancels in every logit; it only keeps the powers
finite. As in the official code (torchscale ``xpos_relative_position.py``,
positions ``−⌈L/2⌉ … ⌊L/2⌋ − 1`` for the scale, ``0 … L−1`` for the rotation), we
take ``c = p_min + ⌈(p_max − p_min + 1)/2⌉`` of each sequence's positions, which
is exactly the official centring for contiguous positions from 0.

Valid only in a causal decoder: for keys after the query the factor
``ζ^{(i−j)/γ}`` grows without bound.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.encodings import rope
from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError


def zeta(dim: int) -> jax.Array:
  """``ζ_m = (2m + 0.4·dim)/(1.4·dim)`` for ``m = 0 .. dim/2 − 1`` (float32)."""
  if dim % 2:
    raise ValueError(f"xPos needs an even head width, got {dim}")
  return (jnp.arange(0, dim, 2, dtype=jnp.float32) + 0.4 * dim) / (1.4 * dim)


def center(positions: jax.Array, *more: jax.Array) -> jax.Array:
  """``p_min + ⌈(p_max − p_min + 1)/2⌉`` over the last axis of ``positions [..., L]`` -> ``[..., 1]``.

  Extra arrays (e.g. key positions) widen the range, row by row.
  """
  rows = [jnp.asarray(p, jnp.int32) for p in (positions, *more)]
  lo = rows[0].min(axis=-1, keepdims=True)
  hi = rows[0].max(axis=-1, keepdims=True)
  for p in rows[1:]:
    lo = jnp.minimum(lo, p.min(axis=-1, keepdims=True))
    hi = jnp.maximum(hi, p.max(axis=-1, keepdims=True))
  return lo + (hi - lo + 2) // 2


def apply(x: jax.Array, positions: jax.Array, *, downscale: bool, gamma: float = 512.0,
          base: float = 10000.0, centre: jax.Array | None = None) -> jax.Array:
  """xPos on ``x [..., L, d]`` at ``positions [..., L]``: queries ``downscale=False``, keys ``True``.

  Scales pair ``m`` by ``ζ_m^{±(n − c)/γ}`` (``c`` = :func:`center` unless
  given; it must be the same for the queries and keys that meet), then rotates
  as :func:`posenc.encodings.rope.rotate` (interleaved). Float32 math.
  """
  d = x.shape[-1]
  pos = jnp.asarray(positions, jnp.float32)
  c = center(positions) if centre is None else centre
  rel = pos - jnp.asarray(c, jnp.float32)
  power = (-rel if downscale else rel) / gamma
  decay = zeta(d) ** power[..., None]  # [..., L, d/2]
  angles = pos[..., None] * rope.frequencies(d, base)
  return rope.rotate_pairs(x, decay * jnp.cos(angles), decay * jnp.sin(angles), "interleaved")


class Encoding(_Base):
  """Rotates and rescales q (up) and k (down) in every layer; v unchanged."""

  MODES = ("decoder",)
  MODE_REASON = ("its key decay ζ^(−n/γ) makes attention to keys after the query grow without "
                 "bound, so it needs a causal mask")

  PROJECT_CONTEXT = True  # the centre comes from the whole sequence, also in decoding steps

  scale_base: float = 512.0  # γ
  base: float = 10000.0

  def check(self, max_position):
    if self.scale_base <= 0:
      raise ConfigError("config.encoding.scale_base", f"γ must be > 0, got {self.scale_base}")
    if self.base <= 1:
      raise ConfigError("config.encoding.base", f"must be > 1, got {self.base}")

  def project(self, q, k, v, q_pos, k_pos, layer, context=None):
    del layer
    # One centre per sequence for queries and keys (it cancels in every logit): from the
    # whole sequence's positions, so that keys cached in incremental decoding stay valid.
    if context is not None:
      c = center(context)
    else:
      c = center(q_pos) if k_pos is q_pos else center(q_pos, k_pos)  # [B|1, 1]
    # Model layout [B, L, H, Dh]: positions [B|1, L] -> [B|1, L, 1] broadcast over heads.
    qt = apply(q, q_pos[:, :, None], downscale=False, gamma=self.scale_base, base=self.base,
               centre=c[:, :, None])
    kt = apply(k, k_pos[:, :, None], downscale=True, gamma=self.scale_base, base=self.base,
               centre=c[:, :, None])
    return qt, kt, v
