"""KERPLE (Chi et al., NeurIPS 2022): kernelized relative positional biases, learned per head.

Two conditionally positive definite kernels, each with per-head ``r1, r2 > 0``:

* :func:`log_bias`:   ``−r1·log(1 + r2·|i − j|)``  (KERPLE-log, the paper's best)
* :func:`power_bias`: ``−r1·|i − j|^{r2}``, ``0 < r2 ≤ 2``

As in the official code (``chijames/KERPLE``, ``megatron/mpu/layers.py``,
``ParallelKerpleLog`` / ``ParallelKerplePower``): one module SHARED by all
layers; each parameter is initialised ``U(0, scale)`` per head with scale 2 for
the exponent-like one and 1 for the other (log: ``r1 ~ U(0, 2)``,
``r2 ~ U(0, 1)``; power: ``r1 ~ U(0, 1)``, ``r2 ~ U(0, 2)``), and is clamped to
``≥ 0.01`` (power's ``r2`` also ``≤ 2``) before use.

Positivity (``encoding.positivity``):

* ``"clamp"`` (default, as official): the stored value is clipped to the
  bounds in the forward pass with a straight-through gradient. The official
  code instead overwrites the stored value with its clip each step (projected
  gradient descent); here the stored value may drift past a bound while the
  used value stays on it — the forward values and gradients at the bound agree.
* ``"softplus"``: ``r = softplus(raw)`` (+ ``min(r2, 2)`` for power); raw is
  initialised so that ``r`` starts from the same uniform draws.

Distances: ``i − j`` in a decoder (clipped at 0: keys after the query are
masked anyway, and this keeps ``log``/``pow`` finite there), ``|i − j|`` in an
encoder.

Direction-blind in an encoder: the bias depends on ``|i − j|`` only, so for a given query
a key ``d`` before it and a key ``d`` after it get the same bias (only the sequence's ends
break the mirror symmetry). KERPLE's paper and official code (GPT-NeoX causal language
models, whose distance matrix is the lower triangle ``tril(i − j)``) define no encoder form,
so none is invented here; ALiBi's asymmetric encoder form (Ruoss et al. 2023: keys before
the query are penalised half a slope less) is the nearest precedent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

VARIANTS = ("log", "power")
POSITIVITY = ("clamp", "softplus")
EPS = 1e-2  # the official lower bound of every parameter


def _per_head(r: jax.Array) -> jax.Array:
  return jnp.asarray(r, jnp.float32)[..., :, None, None]


def log_bias(distance: jax.Array, r1: jax.Array, r2: jax.Array) -> jax.Array:
  """``−r1·log(1 + r2·distance)``: distance ``[..., Lq, Lk]``, ``r1, r2 [H]`` -> ``[..., H, Lq, Lk]``."""
  d = jnp.asarray(distance, jnp.float32)[..., None, :, :]
  return -_per_head(r1) * jnp.log1p(_per_head(r2) * d)


def power_bias(distance: jax.Array, r1: jax.Array, r2: jax.Array) -> jax.Array:
  """``−r1·distance^{r2}``: distance ``[..., Lq, Lk]`` (≥ 0), ``r1, r2 [H]`` -> ``[..., H, Lq, Lk]``.

  ``0^{r2} = 0`` with a finite gradient in ``r2`` (the naive ``pow`` gives NaN).
  """
  d = jnp.asarray(distance, jnp.float32)[..., None, :, :]
  positive = d > 0
  safe = jnp.where(positive, d, 1.0)
  return -_per_head(r1) * jnp.where(positive, safe ** _per_head(r2), 0.0)


def _straight_through_clip(x, lo, hi):
  return x + jax.lax.stop_gradient(jnp.clip(x, lo, hi) - x)


def _inverse_softplus(y):
  return y + jnp.log(-jnp.expm1(-y))


class Encoding(_Base):
  """Adds the KERPLE bias (one parameter set for all layers) to every layer's logits."""

  variant: str = "log"          # or "power"
  positivity: str = "clamp"     # or "softplus"

  def check(self, max_position):
    if self.variant not in VARIANTS:
      raise ConfigError("config.encoding.variant",
                        f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
    if self.positivity not in POSITIVITY:
      raise ConfigError("config.encoding.positivity",
                        f"unknown {self.positivity!r}; choose one of {', '.join(POSITIVITY)}")

  def setup(self):
    heads = self.dims.num_heads
    # Official init: the exponent-like parameter ~ U(0, 2), the other ~ U(0, 1).
    scale1, scale2 = (2.0, 1.0) if self.variant == "log" else (1.0, 2.0)

    def init(scale):
      def f(key, shape, dtype=jnp.float32):
        u = jnp.clip(jax.random.uniform(key, shape, dtype) * scale, EPS, None)
        return _inverse_softplus(u) if self.positivity == "softplus" else u
      return f

    # Created once: every layer reads the same two vectors.
    self.r1 = self.param("r1", init(scale1), (heads,), jnp.float32)
    self.r2 = self.param("r2", init(scale2), (heads,), jnp.float32)

  def parameters(self) -> tuple[jax.Array, jax.Array]:
    """The positive ``(r1, r2)`` used in the forward pass."""
    hi2 = 2.0 if self.variant == "power" else None
    if self.positivity == "softplus":
      r1, r2 = jax.nn.softplus(self.r1), jax.nn.softplus(self.r2)
      return r1, (jnp.minimum(r2, hi2) if hi2 else r2)
    return (_straight_through_clip(self.r1, EPS, None),
            _straight_through_clip(self.r2, EPS, hi2))

  def logits(self, q, k, q_pos, k_pos, layer):
    del q, k, layer
    distance = (q_pos.astype(jnp.float32)[:, :, None]
                - k_pos.astype(jnp.float32)[:, None, :])  # i − j, [B|1, Lq, Lk]
    distance = jnp.maximum(distance, 0.0) if self.dims.causal else jnp.abs(distance)
    r1, r2 = self.parameters()
    fn = log_bias if self.variant == "log" else power_bias
    return fn(distance, r1, r2)
