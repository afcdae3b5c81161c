"""Transformer-XL relative attention (Dai et al., ACL 2019), without the memory.

Logits (paper Sec. 3.3, terms (a)+(b)+(c)+(d); official ``RelPartialLearnableMultiHeadAttn``):

    s_ij = [(q_i + u)·k_j + (q_i + v)·W_R R_{i−j}] / sqrt(d_h)

``R_δ`` is a sinusoid of the distance ``δ = i − j`` (query minus key) of width
``d_model`` in Transformer-XL's concatenated ``[sin | cos]`` layout (official
``PositionalEmbedding``); ``W_R`` (``d_model → H·d_h``, the official ``r_net``)
belongs to each layer; ``u`` and ``v`` (``r_w_bias``, ``r_r_bias``, ``[H, d_h]``)
are shared by all layers. All are initialised ``N(0, 0.02)`` as in the official
``weights_init``. The model already adds ``q·k/sqrt(d_h)``, so the ``logits``
hook returns the rest: ``(u·k_j + (q_i + v)·W_R R_{i−j}) / sqrt(d_h)``.

Three ways to compute the position term ``(q_i + v)·W_R R_{i−j}`` (public math,
tested equal):

* :func:`rel_logits_gather` — the explicit form: project ``R`` for every
  distance in ``(−P, P)`` once, take ``q·`` each row, and gather the row of each
  pair's distance ``pos_i − pos_j``. Exact for any positions below ``P``; costs
  ``O(L·P)`` per head.
* :func:`rel_logits_shift` — the official "rel-shift" trick on index
  distances. The classic form (distances ``L−1 … 0``) is right only on and below
  the diagonal, i.e. under a causal mask; an encoder needs the two-sided form
  (distances ``L−1 … −(L−1)``). It uses the index ``i − j`` in place of
  ``pos_i − pos_j``, so it is valid only for contiguous positions.
* :func:`rel_logits_factorized` — the same sum rewritten with
  ``sin(a−b) = sin a cos b − cos a sin b`` and ``cos(a−b) = cos a cos b + sin a sin b``:
  ``Σ_m A_m(i)·cos(pos_j ω_m) + B_m(i)·sin(pos_j ω_m)``. Exact for any positions
  (up to the float32 rounding of the angles every sinusoid has), ``O(L²·d)``
  like ``q·k``, no ``[L, L, d]`` tensor, cost independent of the position range.

Which one the module uses (decided, correctness first): positions are explicit
data, and a hook cannot know when tracing whether they are contiguous (the
randomized sampler's are not), so the module never uses the shift trick.
``form = "factorized"`` (default) is exact for every sampler at ``O(L²·d)``;
``form = "gather"`` is the literal per-distance table, whose cost grows with the
static position bound (``positions.max_position`` = 2048 under randomized positions).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

FORMS = ("factorized", "gather")


def frequencies(dim: int, base: float = 10000.0) -> jax.Array:
  """``ω_m = base^(−2m/dim)``, ``m < dim/2`` (the official ``inv_freq``), float32."""
  if dim % 2:
    raise ValueError(f"Transformer-XL sinusoids need an even width, got {dim}")
  return base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)


def relative_sinusoid(distance: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
  """``R_δ = [sin(δ·ω) | cos(δ·ω)]`` (concatenated layout) for ``δ`` of any shape -> ``[..., dim]``."""
  angles = jnp.asarray(distance, jnp.float32)[..., None] * frequencies(dim, base)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _project(distance: jax.Array, w_r_DxHxDh: jax.Array, base: float) -> jax.Array:
  """``W_R R_δ`` for a vector of distances -> ``[N, H, Dh]``."""
  r_NxD = relative_sinusoid(distance, w_r_DxHxDh.shape[0], base)
  return jnp.einsum("nc,chd->nhd", r_NxD, w_r_DxHxDh.astype(jnp.float32))


def rel_logits_gather(qv_BxLxHxDh: jax.Array, w_r_DxHxDh: jax.Array, q_pos: jax.Array,
                      k_pos: jax.Array, max_position: int, base: float = 10000.0) -> jax.Array:
  """``(q_i + v)·W_R R_{pos_i − pos_j}`` by explicit gather -> float32 ``[B, H, Lq, Lk]``.

  ``qv`` is ``q + v``; positions are int ``[B|1, L]`` and all below ``max_position``.
  """
  p = max_position
  proj_NxHxDh = _project(jnp.arange(-(p - 1), p), w_r_DxHxDh, base)  # row n ↔ δ = n − (P−1)
  s_BxHxQxN = jnp.einsum("bqhd,nhd->bhqn", qv_BxLxHxDh.astype(jnp.float32), proj_NxHxDh)
  index = q_pos[:, :, None].astype(jnp.int32) - k_pos[:, None, :].astype(jnp.int32) + (p - 1)
  b, h, lq, _ = s_BxHxQxN.shape
  index = jnp.broadcast_to(index[:, None], (b, h, lq, k_pos.shape[-1]))
  return jnp.take_along_axis(s_BxHxQxN, index, axis=-1)


def rel_shift(x: jax.Array, two_sided: bool) -> jax.Array:
  """The rel-shift trick on the last two axes ``[..., Lq, R]`` -> ``[..., Lq, Lq]``.

  Column ``c`` of ``x`` holds distance ``δ = L−1−c``. Returns ``y[i, j] = x[i, L−1−i+j]``,
  the entry for distance ``i − j``:

  * ``two_sided=False``: ``R = L`` (distances ``L−1 … 0``, official ``_rel_shift``);
    entries above the diagonal (``j > i``) are wrapped-around garbage, so this is
    right only under a causal mask.
  * ``two_sided=True``: ``R = 2L−1`` (distances ``L−1 … −(L−1)``); every entry is right.
  """
  *lead, length, r = x.shape
  if two_sided:
    if r != 2 * length - 1:
      raise ValueError(f"two-sided rel-shift needs 2L-1 = {2 * length - 1} columns, got {r}")
    padded = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])  # [..., L, 2L]
    flat = padded.reshape(*lead, length * 2 * length)[..., length:]  # drop the first L entries
    return flat.reshape(*lead, length, 2 * length - 1)[..., :length]
  if r != length:
    raise ValueError(f"causal rel-shift needs L = {length} columns, got {r}")
  padded = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (1, 0)])  # [..., L, L+1]
  # Viewed as [L+1, L], the first row is dropped (official ``x_padded[1:]``).
  flat = padded.reshape(*lead, length * (length + 1))[..., length:]
  return flat.reshape(*lead, length, length)


def rel_logits_shift(qv_BxLxHxDh: jax.Array, w_r_DxHxDh: jax.Array, *, causal: bool,
                     base: float = 10000.0) -> jax.Array:
  """``(q_i + v)·W_R R_{i−j}`` by the rel-shift trick, for contiguous positions -> ``[B, H, L, L]``.

  ``causal=True`` is the official classic form: right only for ``j ≤ i``.
  ``causal=False`` is the two-sided form an encoder needs: right everywhere.
  """
  length = qv_BxLxHxDh.shape[1]
  stop = -1 if causal else -length
  distance = jnp.arange(length - 1, stop, -1)  # descending, as the official pos_seq
  proj_RxHxDh = _project(distance, w_r_DxHxDh, base)
  s_BxHxLxR = jnp.einsum("bqhd,rhd->bhqr", qv_BxLxHxDh.astype(jnp.float32), proj_RxHxDh)
  return rel_shift(s_BxHxLxR, two_sided=not causal)


def rel_logits_factorized(qv_BxLxHxDh: jax.Array, w_r_DxHxDh: jax.Array, q_pos: jax.Array,
                          k_pos: jax.Array, base: float = 10000.0) -> jax.Array:
  """``(q_i + v)·W_R R_{pos_i − pos_j}`` by the angle-difference identity -> ``[B, H, Lq, Lk]``.

  With ``w = W_Rᵀ(q_i + v) = [w_s | w_c]`` and ``a = pos_i·ω``, ``b = pos_j·ω``:
  ``Σ_m w_s sin(a−b) + w_c cos(a−b)
  = Σ_m (w_s sin a + w_c cos a)·cos b + (w_c sin a − w_s cos a)·sin b``.
  """
  dim = w_r_DxHxDh.shape[0]
  w_BxQxHxD = jnp.einsum("bqhd,chd->bqhc", qv_BxLxHxDh.astype(jnp.float32),
                         w_r_DxHxDh.astype(jnp.float32))
  w_s, w_c = w_BxQxHxD[..., : dim // 2], w_BxQxHxD[..., dim // 2:]
  omega = frequencies(dim, base)
  a = q_pos.astype(jnp.float32)[:, :, None, None] * omega  # [B|1, Lq, 1, D/2]
  coef_cos = w_s * jnp.sin(a) + w_c * jnp.cos(a)
  coef_sin = w_c * jnp.sin(a) - w_s * jnp.cos(a)
  b = k_pos.astype(jnp.float32)[..., None] * omega  # [B|1, Lk, D/2]
  if b.shape[0] == 1:  # positions shared by the batch: keep the key side batch-free
    return (jnp.einsum("bqhm,km->bhqk", coef_cos, jnp.cos(b[0]))
            + jnp.einsum("bqhm,km->bhqk", coef_sin, jnp.sin(b[0])))
  return (jnp.einsum("bqhm,bkm->bhqk", coef_cos, jnp.cos(b))
          + jnp.einsum("bqhm,bkm->bhqk", coef_sin, jnp.sin(b)))


class Encoding(_Base):
  """Per-layer ``W_R``; ``u``, ``v`` shared by all layers; no input encoding."""

  base: float = 10000.0
  form: str = "factorized"  # or "gather" (see the module docstring; never the shift trick)

  def setup(self):
    d, h, dh = self.dims.d_model, self.dims.num_heads, self.dims.head_dim
    init = nn.initializers.normal(0.02)
    self.u = self.param("r_w_bias", init, (h, dh), jnp.float32)
    self.v = self.param("r_r_bias", init, (h, dh), jnp.float32)
    self.w_r = [self.param(f"layer{l}_r_net", init, (d, h, dh), jnp.float32)
                for l in range(self.dims.num_layers)]

  def check(self, max_position):
    del max_position  # sinusoids exist at every distance
    if self.form not in FORMS:
      raise ConfigError("config.encoding.form",
                        f"unknown form {self.form!r}; choose one of {FORMS} (the rel-shift trick "
                        "is public math only: it is wrong for non-contiguous positions)")

  def logits(self, q, k, q_pos, k_pos, layer):
    qf, kf = q.astype(jnp.float32), k.astype(jnp.float32)
    content_bias_BxHx1xK = jnp.einsum("hd,bkhd->bhk", self.u, kf)[:, :, None, :]
    if self.form == "gather":
      pos = rel_logits_gather(qf + self.v, self.w_r[layer], q_pos, k_pos,
                              self.dims.max_position, self.base)
    else:
      pos = rel_logits_factorized(qf + self.v, self.w_r[layer], q_pos, k_pos, self.base)
    return (content_bias_BxHx1xK + pos) / math.sqrt(self.dims.head_dim)
