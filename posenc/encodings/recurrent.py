"""Recurrent absolute encodings: each position's vector is computed from the previous one.

The "递归式" (recurrent) kind of absolute encoding in Su's survey
(kexue.fm/archives/8130), in its two forms, chosen by ``form``:

``form = "iterate"`` — ``p_{k+1} = f(p_k)`` from a learned ``p_0`` (the discrete
cousin of FLOATER's ODE). The table is batch-independent: it is computed once
per forward pass with ``lax.scan`` up to ``dims.max_position`` (in ``setup``)
and gathered at the given positions, so randomized positions and offsets work
as with any table, and extrapolation is iterating further. The step is

    h(p)  = A·p + W2·tanh(W1·p + b1),    A = (I − K)⁻¹(I + K),  K = S − Sᵀ
    f(p)  = ‖p‖ · h(p) / ‖h(p)‖

``f`` is **norm-preserving**: every ``p_k`` has the norm of ``p_0``, so the
encoding stays bounded however far it is iterated (no blow-up or decay with
length). ``A`` is kept orthogonal (the Cayley transform of a skew-symmetric
``K``; cheaper to compile and differentiate than the matrix exponential)
because a general ``A`` under the normalisation is the power method: the
iterates would converge to ``A``'s dominant eigenvector and far positions would
all look alike; a rotation has no dominant direction. Initialisation:
``S`` such that ``A = M(1)`` (:func:`posenc.encodings.sinusoidal.rotation`),
``W2 = 0`` and ``p_0 = sinusoidal.table(0)``, so at initialisation the scheme
*is* the sinusoidal encoding and training learns a departure from it.

``form = "rnn"`` — a GRU (``flax.linen.GRUCell``, width ``d``) reads the token
embeddings left to right in front of the Transformer, as in the RNN-Transformer
of Neishi & Yoshinaga (CoNLL 2019), which replaces the position-encoding layer
by an RNN. With ``residual = True`` (default) its outputs are added to the
embeddings, ``x_t + GRU(x_1..x_t)``, so the token identity has a direct path;
``residual = False`` feeds ``GRU(x_1..x_t)`` alone, as in that paper. It takes
position from the **token order**, not from the ``positions`` array, which it
ignores: randomized positions or offsets change nothing in this form. It is
left to right in both modes: real tokens come before all padding, so the PAD
tail that fills a sequence to its length bucket never reaches them, and the
scheme needs no validity mask (tested: a row's logits are the same however it
is padded). In an encoder a bidirectional RNN would be natural; its
right-to-left pass would start in the PAD tail and would have to skip it (ask
for ``EMBED_VALID`` and reverse each row within its real tokens). It is not
used here: the encoder's attention already sees both sides.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings import sinusoidal
from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

FORMS = ("iterate", "rnn")
_EPS = 1e-12


def iterate(f: Callable[[jax.Array], jax.Array], p0: jax.Array, num_positions: int) -> jax.Array:
  """``[p_0, f(p_0), f(f(p_0)), …]``: ``[num_positions, d]`` float32, by ``lax.scan``.

  ``f`` maps a ``[d]`` vector to a ``[d]`` vector; row ``k`` is ``f`` applied ``k`` times.
  """
  p0 = jnp.asarray(p0, jnp.float32)

  def step(p, _):
    return f(p).astype(jnp.float32), p

  _, rows = jax.lax.scan(step, p0, None, length=num_positions)
  return rows


def norm_preserving(h: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
  """``f(p) = ‖p‖ · h(p) / ‖h(p)‖``: ``h``'s direction, ``p``'s norm (iterates stay bounded)."""
  def f(p):
    out = h(p)
    return out * (jnp.linalg.norm(p) / jnp.maximum(jnp.linalg.norm(out), _EPS))
  return f


def rotation_from_generator(generator: jax.Array) -> jax.Array:
  """Cayley transform ``A = (I − K)⁻¹(I + K)``, ``K = S − Sᵀ``: orthogonal ``[d, d]``.

  ``I − K`` is always invertible (``K`` is skew-symmetric, so its eigenvalues
  are imaginary); float32.
  """
  s = jnp.asarray(generator, jnp.float32)
  k = s - s.T
  eye = jnp.eye(s.shape[0], dtype=jnp.float32)
  return jnp.linalg.solve(eye - k, eye + k)


def sinusoid_generator(dim: int, base: float = 10000.0) -> jax.Array:
  """An ``S`` whose Cayley transform is ``sinusoidal.rotation(1, dim, base)``.

  ``M(1)`` has 2×2 blocks ``[[cos ω, sin ω], [−sin ω, cos ω]]`` on channel pairs
  ``(2m, 2m+1)``; the Cayley transform of ``[[0, t], [−t, 0]]`` is
  ``[[1 − t², 2t], [−2t, 1 − t²]] / (1 + t²)``, that block for ``t = tan(ω/2)``.
  So ``S`` holds ``tan(ω_m / 2)`` at ``(2m, 2m+1)`` and zeros elsewhere.
  """
  omega = sinusoidal.frequencies(dim, base)
  even = jnp.arange(0, dim, 2)
  return jnp.zeros((dim, dim), jnp.float32).at[even, even + 1].set(jnp.tan(omega / 2))


def step_network(params: dict) -> Callable[[jax.Array], jax.Array]:
  """``h(p) = A·p + W2·tanh(W1·p + b1)`` from ``{"A", "W1", "b1", "W2"}`` (``W`` maps columns)."""
  def h(p):
    hidden = jnp.tanh(params["W1"] @ p + params["b1"])
    return params["A"] @ p + params["W2"] @ hidden
  return h


class Encoding(_Base):
  """``iterate``: adds ``p_k`` from the recurrence; ``rnn``: adds a left-to-right GRU's outputs."""

  EVAL_CACHE = ("table",)  # the iterate form's table; the rnn form has none

  form: str = "iterate"
  hidden: int = 64       # width of the tanh layer of the step network (iterate)
  base: float = 10000.0  # sinusoid base of the initial rotation A = M(1) and p_0 (iterate)
  residual: bool = True  # rnn: x + GRU(x); False: GRU(x) alone (Neishi & Yoshinaga 2019)

  def setup(self):
    d = self.dims.d_model
    if self.form == "iterate":
      self.p0 = self.param("p0", lambda key, shape: sinusoidal.table(jnp.zeros(()), d, self.base),
                           (d,))
      self.S = self.param("S", lambda key, shape: sinusoid_generator(shape[0], self.base), (d, d))
      self.W1 = self.param("W1", nn.initializers.lecun_normal(), (self.hidden, d))
      self.b1 = self.param("b1", nn.initializers.zeros, (self.hidden,))
      # Zero: the step starts as the pure rotation, i.e. the sinusoidal table.
      self.W2 = self.param("W2", nn.initializers.zeros, (d, self.hidden))
      a = rotation_from_generator(self.S)
      f = norm_preserving(step_network({"A": a, "W1": self.W1, "b1": self.b1, "W2": self.W2}))
      if self.has_variable("cache", "table"):  # evaluation: iterated once for every length
        self.table = self.get_variable("cache", "table")
      else:
        self.table = iterate(f, self.p0, self.dims.max_position)  # [max_position, d], batch-free
    elif self.form == "rnn":
      self.rnn = nn.RNN(nn.GRUCell(features=d), name="gru")

  def check(self, max_position):
    del max_position
    if self.form not in FORMS:
      raise ConfigError("config.encoding.form",
                        f"unknown form {self.form!r}; choose one of {FORMS}")
    if self.form == "iterate" and self.hidden < 1:
      raise ConfigError("config.encoding.hidden", f"must be >= 1, got {self.hidden}")

  def incremental(self):
    return self.form == "iterate"  # the GRU scans the token sequence

  def embed(self, x, positions):
    if self.form == "iterate":
      rows = jnp.take(self.table, positions, axis=0, mode="clip")
      return x + rows.astype(x.dtype)
    # rnn: positions are ignored; order comes from the scan over the sequence axis.
    del positions
    h = self.rnn(x.astype(jnp.float32)).astype(x.dtype)
    return x + h if self.residual else h
