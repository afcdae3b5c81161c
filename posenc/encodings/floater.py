"""FLOATER: position as a continuous dynamical system (Liu, Yu, Dhillon, Hsieh, ICML 2020,
"Learning to Encode Position for Transformer with Continuous Dynamical Model").

The position of token ``k`` is the state of a neural ODE read at time ``t_k = k·Δt``::

    dp/dt = h(p, t; θ),   p(0) learned,   position k  ->  p(k·Δt)

Conventions (as in the official code, xuanqing94/FLOATER, ``fairseq/modules/flow_funcs.py``
``flow_func_linear``/``Linear_t`` and ``fairseq/models/flow_transformer.py``
``FlowTransformerEncoder``):

* ``h(p, t) = W2·[ReLU(W1·[p; t] + b1); t] + b2``: two linear maps, each fed the time as one
  extra input channel, ``W1, W2 ∈ R^{d×(d+1)}`` xavier-normal, zero biases. Stored here as
  flax kernels ``w1, w2`` of shape ``[d+1, d]`` (``[p; t] @ w``, i.e. ``Wᵀ``; the last row
  multiplies ``t``), biases ``b1, b2`` of shape ``[d]``.
* ONE ``h`` is shared by all layers; only the initial values differ: ``p(0)`` is
  ``[3, layers, d]`` (q, k, v biases of every layer; torch's ``xavier_uniform_`` on that
  3-D tensor, i.e. fan_in = layers·d, fan_out = 3·d), and the whole ``[3, layers, d]`` block is
  ONE ODE state (``odeint(proj_flow, proj_bias, time_grid)`` in the official encoder), so one
  solve per forward pass serves every position, layer and q/k/v.
* ``Δt = 0.01``; row ``k`` of the solution is position ``k`` (the official code gathers
  ``cached_bias[:tok_len]`` for tokens ``0 .. tok_len−1``).
* The official solver is torchdiffeq's fixed-grid ``rk4`` with ``step_size = Δt/5``; torchdiffeq's
  ``rk4`` is the 3/8-rule variant (``rk4_alt_step_func``), reproduced by :class:`RK4` below.
  Here adaptive Tsit5 (rtol/atol) is the default and RK4 at ``Δt/5`` the option
  (``method="rk4"``).
* Injection, default (``"qkv"``, the official form): the solved state is added to the q, k and v
  projections of every layer (before the ``1/sqrt(d_h)`` scaling, as ``FlowAttention`` does),
  the projections carry no bias of their own, and a sinusoidal encoding is still added to the
  input (the official encoder keeps fairseq's ``embed_positions``). Option (``"layer_input"``,
  the paper's conceptual form, position added to the input of every block): one state per
  layer (``p(0)`` is ``[1, layers, d]``). The hook of the mode not chosen is the identity.

Flow forms (``flow``; public math :func:`flow_field`, :func:`enforce_bound`). Nothing in the
paper's ``h`` keeps the state bounded once the training positions end: trained on positions
below 32 (default preset, 3000 steps), the mean ``‖p(k·Δt) − p(0)‖`` over streams and layers
grew from 36 at position 31 to 4.7·10⁷ at position 127. Every form but ``"free"`` wraps ``h``
so that a bound holds **by construction, for every parameter value and every t**
(``c = flow_speed``, ``λ = flow_decay``; bounds per component ``p_i`` or per row ``[d]`` of
every stream and layer):

* ``"free"`` — ``dp/dt = h(p, t)``, the paper's form. No bound: ``‖p‖`` can grow like
  ``exp(Lip(h)·t)``, and ``h`` is fed ``t`` itself, unbounded.
* ``"tanh"`` — ``dp/dt = c·tanh(h/c)`` (≈ ``h`` where ``|h| ≪ c``). Speed
  ``|dp_i/dt| ≤ c``, hence ``|p_i(t) − p_i(0)| ≤ c·t``: growth at most linear in ``t``.
* ``"decay"`` — ``dp/dt = c·tanh(h/c) − λ·p``. A bound uniform in ``t``:
  ``|p_i(t)| ≤ max(|p_i(0)|, c/λ)`` (where ``|p_i| > c/λ`` the field points towards 0), and
  every component enters ``[−c/λ, c/λ]`` at rate ``λ``. With ``c = λ = 10``: ``|p_i| ≤
  max(|p_i(0)|, 1)``, relaxation time ``1/λ = 0.1`` (10 positions), so training already sees
  the bound act. It contracts towards a bounded set, so far positions can look alike.
* ``"sphere"`` — norm-preserving, as the ``recurrent`` scheme's iterate form: ``dp/dt = v −
  (p·v/‖p‖²)·p`` with ``v = c·tanh(h/c)``, the saturated field's tangential part, so
  ``d‖p‖²/dt = 0``: ``‖p(t)‖ = ‖p(0)‖`` for every ``t``, speed at most ``c·√d``. Nothing
  converges: the state keeps moving on its sphere.

The bounds are those of the exact flows; a numerical solution keeps them only to the solver's
tolerance, so the rows are read out through :func:`enforce_bound` (rescaled to ``‖p(0)‖`` or
clipped to the bound; the identity away from it) and the bound holds for the table itself.
A spectrally normalised ``h`` alone is not offered: with ``Lip(h) ≤ 1`` the state may still
grow like ``e^t`` (``e^32 ≈ 8·10¹³`` at 100x the default preset's 32 training positions).
Bounded speed also ties the adaptive solver's step count to the length of the solve (and to
``c`` times the Lipschitz constant of ``h``), never to how large the state has grown. ``results.json`` records the trajectory's growth and the evaluation
solve's steps (``encoding_report``, :meth:`Encoding.report`), so a diverging flow is visible.

The default, ``"auto"``, is the paper's ``"free"`` form on the contiguous positions of every
preset and ``"decay"`` where training positions reach past :data:`FREE_HORIZON` (randomized
positions; see below). The bounded forms use a step-size controller that
reads rounding-level error estimates as 0 (:func:`step_size_controller`): with diffrax's own,
``"decay"``'s time grid followed float32 rounding, and two seeds split over two CPU devices
(``seed_loop=shard_spmd``) ended 1e-3 away from their single-seed runs (``ode_b1``, 4 smoke
steps); with it they agree to 3e-7, as ``"free"``'s do. Measured on the default preset (reverse_string, 2 seeds; 2-core CPU), every form is at chance beyond the
training lengths (free 0.511, tanh 0.514, decay 0.523, sphere 0.518) and within seed spread in
range (0.996, 0.992, 0.989, 0.990), so accuracy does not choose; the bound does. Solved to 100x
the training positions (3200), the trained free flows reached 10³⁴ in one seed and ran out of
16384 solver steps in the other (an evaluation that long would stop with the max_steps error),
while decay stayed below norm 5.7 in 128-131 steps (tanh: linear drift to 2500 in 13-15 steps;
sphere: norm kept exactly, 532-605 steps, since it keeps turning). ``decay`` is the one form
with a bound uniform in ``t`` and a solve whose cost stays moderate.

Public math: :func:`vector_field` (``h``), :func:`flow_field`, :func:`init_dynamics`,
:func:`init_p0`, :func:`solve`, :func:`solve_with_status`, :func:`solve_stats`, :func:`lookup`;
:func:`solver_stats` for benchmarks; :func:`trajectory_report` for ``results.json``;
:func:`resolve_flow` (what ``flow="auto"`` solves), :func:`growth_message` (a divergence
explained by the state's growth).

Failures (the solver running out of ``max_steps``, a blow-up to NaN/Inf) are clear errors that
name the config field to change. :func:`solve` raises them through ``eqx.branched_error_if`` (a
host callback). The training step and the evaluation table use :func:`solve_with_status`
instead, so no compiled program stops for Python: the outcome and the step count become the
metrics ``ode_status`` and ``ode_steps`` (shown in the progress lines), and the host raises
the same message when the loss turns NaN (``Encoding.explain_failure``). diffrax's own input
checks (on the time grid) are still equinox callbacks in the traced program unless
``EQX_ON_ERROR=nan`` is set before equinox is imported, as posenc's entry points do
(``experiments/__init__.py``): JAX runs any program with a host callback synchronously, which
cost FLOATER's training step about 7% on a 2-core CPU.

Extrapolation = integrate further: a program whose positions are below ``max_position`` solves
``max_position`` rows, whatever the training length was. Randomized positions work because rows
are gathered by position. The official code solved to ``t ≤ 2.54`` (``max_seq_len = 255``);
randomized positions (or random offsets) train on positions up to ``positions.max_position``,
``t ≈ 20`` at 2048, where the untrained free flow already grows the state ~5·10⁶-fold: the
q/k/v terms swamp attention and training diverges (gradient norm 2·10⁵ by step 100, NaN at
step 157 on the default preset). So ``flow="auto"``, the default, resolves to ``"free"`` (the
paper's) only while every training position's time stays within :data:`FREE_HORIZON`, and to
``"decay"`` beyond it (:func:`resolve_flow`; the run prints a ``note:``); ``decay`` rather than
a time rescaling (a smaller ``dt``) because it is bounded for every parameter value and every
position, so evaluation at any length stays bounded too, whereas a rescaled free flow is only
untrained-safe and can still grow once trained. A divergence with the state's norm past
:data:`GROWTH_NORM` (diagnostic ``ode_norm``) is explained as that growth
(:meth:`Encoding.explain_failure`).

Gradients go through the solver (``diffrax.RecursiveCheckpointAdjoint``) by default; the
continuous adjoint (``diffrax.BacksolveAdjoint``, what the official code's ``odeint_adjoint``
does) is the option ``adjoint="backsolve"``. Unlike the official code, which re-solves only
every 400 updates and reuses a detached cache in between, the table is solved on every
forward pass (exact gradients every step).
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import diffrax
import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from posenc.encodings import sinusoidal
from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

METHODS = ("tsit5", "rk4")
ADJOINTS = ("recursive", "backsolve")
INJECTIONS = ("qkv", "layer_input")
FLOWS = ("free", "tanh", "decay", "sphere")
# ``encoding.flow`` also takes "auto" (the default): see :func:`resolve_flow`.
FLOW_OPTIONS = ("auto",) + FLOWS
# The longest time the paper's free flow is fit over in the official code (max_seq_len 255 at
# Δt = 0.01, so t <= 2.54): "auto" keeps the free flow while every training position's time is
# within it. Untrained (xavier) dynamics grow ‖p‖ about 7x by t = 2.56, 2·10³x by t = 10.24 and
# 5·10⁶x by t = 20.47 (3 seeds, d = 64): no optimizer recovers from the last.
FREE_HORIZON = 2.55
# What "auto" picks beyond FREE_HORIZON: the one form bounded uniformly in t (module docstring).
AUTO_BOUNDED_FLOW = "decay"
# A state norm past this (xavier p(0) rows have norm ~0.7, the sinusoidal input ~5.7, trained
# in-range trajectories stay below ~40) is named as the likely cause of a divergence.
GROWTH_NORM = 1e3
_EPS = 1e-12

# One dynamics callable: ``dynamics(params, t, p) -> dp/dt`` with ``p`` of any shape.
Dynamics = Callable[[Any, jax.Array, jax.Array], jax.Array]

_MAX_STEPS_MSG = (
    "FLOATER ODE solver: the solve to t={t1:g} ({n} positions) did not finish within "
    "max_steps={max_steps} solver steps (the learned dynamics became stiff or blew up); raise "
    "--config.encoding.max_steps (config.encoding.max_steps), loosen config.encoding.rtol/atol, "
    "or lower config.train.learning_rate")
_NONFINITE_MSG = (
    "FLOATER ODE solver: the solved positions are NaN/Inf (the learned dynamics blew up); use "
    "the adaptive solver (config.encoding.method=tsit5, bounded by config.encoding.max_steps="
    "{max_steps}), lower config.train.learning_rate, or lower config.encoding.dt")


# ----------------------------------------------------------------------------- dynamics


def vector_field(params: dict, t: jax.Array, p: jax.Array) -> jax.Array:
  """``h(p, t) = W2·[ReLU(W1·[p; t] + b1); t] + b2`` on the last axis of ``p`` ([..., d]).

  ``params``: ``w1, w2`` of shape ``[d+1, d]`` (last row multiplies ``t``), ``b1, b2`` ``[d]``.
  Every leading index of ``p`` (q/k/v, layer) goes through the same ``h``.
  """
  def linear_t(w, b, x):
    # [x; t] @ w without materialising the concatenation.
    return x @ w[:-1] + t * w[-1] + b
  return linear_t(params["w2"], params["b2"],
                  jax.nn.relu(linear_t(params["w1"], params["b1"], p)))


def init_dynamics(key: jax.Array, dim: int) -> dict:
  """Fresh ``h`` parameters: xavier-normal kernels ``[dim+1, dim]``, zero biases (``Linear_t``)."""
  k1, k2 = jax.random.split(key)
  xavier = nn.initializers.xavier_normal()
  return {"w1": xavier(k1, (dim + 1, dim), jnp.float32), "b1": jnp.zeros((dim,), jnp.float32),
          "w2": xavier(k2, (dim + 1, dim), jnp.float32), "b2": jnp.zeros((dim,), jnp.float32)}


def flow_field(dynamics: Dynamics = vector_field, flow: str = "free", *, speed: float = 10.0,
               decay: float = 10.0) -> Dynamics:
  """The vector field of flow form ``flow`` built on ``dynamics`` (``h``); see the module docstring.

  ``"free"``: ``h`` itself. ``"tanh"``: ``c·tanh(h/c)``. ``"decay"``: ``c·tanh(h/c) − λ·p``.
  ``"sphere"``: ``c·tanh(h/c)`` minus its component along ``p`` (per row ``[d]``), so
  ``d‖p‖²/dt = 0``. ``c = speed``, ``λ = decay``. Every row ``[..., d]`` of the state goes
  through the same field; :func:`solve` reads the bounded forms out through
  :func:`enforce_bound`.
  """
  if flow not in FLOWS:
    raise ValueError(f"unknown FLOATER flow {flow!r}; choose one of {FLOWS}")
  if flow == "free":
    return dynamics

  def saturated(params, t, p):
    return speed * jnp.tanh(dynamics(params, t, p) / speed)

  if flow == "tanh":
    return saturated
  if flow == "decay":
    return lambda params, t, p: saturated(params, t, p) - decay * p

  def tangent(params, t, p):
    v = saturated(params, t, p)
    along = jnp.sum(v * p, -1, keepdims=True) / jnp.maximum(jnp.sum(p * p, -1, keepdims=True), _EPS)
    return v - along * p
  return tangent


def resolve_flow(flow: str, train_positions: int, dt: float) -> str:
  """The flow form a run with ``encoding.flow = flow`` solves; only ``"auto"`` is resolved.

  ``"auto"`` is the paper's ``"free"`` flow while every training position's time
  ``(train_positions − 1)·dt`` stays within :data:`FREE_HORIZON` (the official code's range),
  and :data:`AUTO_BOUNDED_FLOW` (``"decay"``) beyond it: randomized positions
  (``positions.kind=randomized``) or random offsets train on positions up to
  ``positions.max_position`` (t = 20.47 at 2048), where even the untrained free flow grows the
  state a million-fold and training diverges. ``train_positions`` is ``Dims.train_positions``
  (every real training token's position is below it; 0: unknown, read as within the horizon),
  the same in every program of a run, so training and evaluation solve the same flow.
  """
  if flow != "auto":
    return flow
  if train_positions and (train_positions - 1) * dt > FREE_HORIZON + 1e-9:  # 255·0.01 rounds up
    return AUTO_BOUNDED_FLOW
  return "free"


def free_dt(num_positions: int) -> float:
  """The largest ``dt`` of 3 significant digits that keeps ``num_positions`` positions within
  :data:`FREE_HORIZON` (the time step a message suggests for the free flow)."""
  v = FREE_HORIZON / max(num_positions - 1, 1)
  unit = 10.0 ** (math.floor(math.log10(v)) - 2)
  return float(f"{math.floor(v / unit + 1e-9) * unit:.3g}")


def auto_flow_note(train_positions: int, dt: float) -> str:
  """The line a run logs when ``flow="auto"`` picks a bounded flow (see :func:`resolve_flow`)."""
  flow = resolve_flow("auto", train_positions, dt)
  return (f"FLOATER: encoding.flow=auto -> {flow}: training positions reach "
          f"{train_positions - 1} (t = {(train_positions - 1) * dt:g} at dt={dt:g}), past the "
          f"t <= {FREE_HORIZON:g} the paper's free flow is fit over, where it grows the state by "
          f"orders of magnitude and training diverges; {flow} holds |p_i| <= max(|p_i(0)|, "
          "flow_speed/flow_decay). The free flow on request: --config.encoding.flow=free with "
          f"--config.encoding.dt={free_dt(train_positions):g}")


def enforce_bound(rows: jax.Array, p0: jax.Array, ts, flow: str, *, speed: float = 10.0,
                  decay: float = 10.0) -> jax.Array:
  """A solve's rows ``[N, ..., d]`` (at times ``ts`` ``[N]``) held to their flow's bound.

  The exact flows keep their bounds (module docstring); a numerical solution keeps them only
  to the solver's tolerance (Tsit5 at rtol 1e-3 overshot ``"decay"``'s bound by 1% in a test).
  This read-out makes them hold for the rows themselves: ``"sphere"`` rescales each row
  ``[d]`` to ``‖p(0)‖``; ``"decay"`` clips to ``±max(|p_i(0)|, c/λ)``; ``"tanh"`` clips to
  ``p_i(0) ± c·t``; ``"free"`` is unchanged. Away from the bound it is the identity.
  """
  if flow == "sphere":
    norm = jnp.linalg.norm(rows, axis=-1, keepdims=True)
    return rows * (jnp.linalg.norm(p0, axis=-1, keepdims=True) / jnp.maximum(norm, _EPS))
  if flow == "decay":
    bound = jnp.maximum(jnp.abs(p0), speed / decay)
    return jnp.clip(rows, -bound, bound)
  if flow == "tanh":
    reach = speed * jnp.asarray(ts, rows.dtype).reshape((-1,) + (1,) * p0.ndim)
    return jnp.clip(rows, p0 - reach, p0 + reach)
  return rows


# torch's xavier_uniform_ on [S, layers, d]: fan_in = layers·d, fan_out = S·d.
_p0_init = nn.initializers.xavier_uniform(in_axis=1, out_axis=0)


def init_p0(key: jax.Array, num_streams: int, num_layers: int, dim: int) -> jax.Array:
  """Initial values ``p(0)`` ``[num_streams, num_layers, dim]`` (3 streams: q, k, v)."""
  return _p0_init(key, (num_streams, num_layers, dim), jnp.float32)


# ----------------------------------------------------------------------------- solver

# torchdiffeq's "rk4" (rk4_alt_step_func): Kutta's 3/8 rule. It has no embedded error estimate
# (b_error = 0), so it only runs with fixed steps.
_RK4_38_TABLEAU = diffrax.ButcherTableau(
    c=np.array([1 / 3, 2 / 3, 1.0]),
    a_lower=(np.array([1 / 3]), np.array([-1 / 3, 1.0]), np.array([1.0, -1.0, 1.0])),
    b_sol=np.array([1 / 8, 3 / 8, 3 / 8, 1 / 8]),
    b_error=np.zeros(4),
)


class RK4(diffrax.AbstractERK):
  """Classical 4th-order Runge–Kutta, 3/8 rule, as torchdiffeq's ``method="rk4"``; fixed steps."""

  tableau: ClassVar[diffrax.ButcherTableau] = _RK4_38_TABLEAU
  interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]] = (
      diffrax.ThirdOrderHermitePolynomialInterpolation.from_k)

  def order(self, terms):
    del terms
    return 4


def _time_grid(num_positions: int, dt: float, dtype) -> np.ndarray:
  # A host constant, not a traced array: diffrax's runtime checks on ``ts`` then see constants,
  # which XLA folds away, so no host callback is left in the compiled program.
  return np.arange(num_positions, dtype=dtype) * np.asarray(dt, dtype)


# Scaled error estimates (error / tolerance) below this are read as 0 by the bounded flows'
# step-size controller; see :func:`step_size_controller`.
ERROR_FLOOR = 1e-2


def step_size_controller(rtol: float, atol: float, flow: str = "free") -> diffrax.PIDController:
  """Tsit5's step-size controller: diffrax's PID (I) controller at ``rtol``/``atol``; for the
  bounded flows, scaled error estimates below :data:`ERROR_FLOOR` count as 0.

  Why the floor: the next step is ``0.9·err^(-1/5)`` times the last (at most 10x), where
  ``err`` is the RMS of Tsit5's embedded error estimate over ``atol + rtol·|y|``. After a
  step far shorter than the tolerance allows (the first one, at ``dt0 = Δt``), that estimate
  is a difference of nearly equal float32 sums: ``err`` of 1e-5 to 1e-4 is rounding, not
  error. The free flow's first estimate falls below ``(0.9/10)^5 ≈ 6e-6``, where the 10x cap
  decides; ``decay`` (``λ = 10``: fast) lands in the band above it, so its time grid followed
  the rounding. Two programs that round differently (a seed alone, or vmapped and
  partitioned over devices with another seed: ``seed_loop=shard_spmd``) then stepped
  differently, and since ``h``'s ReLU kinks move under the stages when the grid moves, the
  gradient jumped (a 1e-7 change of the parameters changed it by up to 100%), and the
  seeds' parameters parted by ~1e-3 within 4 smoke steps. Read as 0, a rounding-level
  estimate takes the 10x cap, like the free flow's; an estimate above the floor is at least
  ~100x its rounding, and the grid is then a well-conditioned function of the parameters.
  (Cost, measured on random ``decay`` dynamics over 12 and 128 positions: from one step
  fewer to two more per solve.)

  The free flow keeps diffrax's controller unchanged, so its committed results reproduce.
  """
  controller = diffrax.PIDController(rtol=rtol, atol=atol)
  if flow == "free":
    return controller
  rms = controller.norm

  def floored(scaled_error):
    e = rms(scaled_error)
    return jnp.where(e < ERROR_FLOOR, jnp.zeros_like(e), e)

  return diffrax.PIDController(rtol=rtol, atol=atol, norm=floored)


def _diffeqsolve(params, p0, num_positions: int, *, dynamics: Dynamics, dt: float, method: str,
                 rtol: float, atol: float, max_steps: int, adjoint: str, rk4_substeps: int,
                 checkpoints: int | None, flow: str = "free", flow_speed: float = 10.0,
                 flow_decay: float = 10.0) -> diffrax.Solution:
  if method not in METHODS:
    raise ValueError(f"unknown FLOATER ODE method {method!r}; choose one of {METHODS}")
  if adjoint not in ADJOINTS:
    raise ValueError(f"unknown FLOATER adjoint {adjoint!r}; choose one of {ADJOINTS}")
  dtype = jnp.result_type(p0.dtype, jnp.float32)
  p0 = p0.astype(dtype)
  ts = _time_grid(num_positions, dt, dtype)
  if method == "tsit5":
    solver, controller, dt0 = diffrax.Tsit5(), step_size_controller(rtol, atol, flow), dt
  else:
    # Fixed grid of step dt/substeps from t=0, as torchdiffeq's step_size option: exactly
    # substeps·(num_positions−1) steps, known in advance, so max_steps (a bound for the
    # adaptive solver) is that number. Reads between step ends are Hermite-interpolated (an
    # O(ulp) offset).
    solver, controller, dt0 = RK4(), diffrax.ConstantStepSize(), dt / rk4_substeps
    max_steps = rk4_substeps * (num_positions - 1)
  if adjoint == "recursive":
    adj = diffrax.RecursiveCheckpointAdjoint(checkpoints=checkpoints)
  else:
    adj = diffrax.BacksolveAdjoint()
  field = flow_field(dynamics, flow, speed=flow_speed, decay=flow_decay)
  term = diffrax.ODETerm(lambda t, y, args: field(args, t, y))
  # t0, t1 as Python floats are static, so diffrax checks them while tracing.
  return diffrax.diffeqsolve(
      term, solver, t0=float(ts[0]), t1=float(ts[-1]), dt0=dt0, y0=p0, args=params,
      saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller, adjoint=adj,
      max_steps=max_steps, throw=False)


def solve(params: Any, p0: jax.Array, num_positions: int, *, dynamics: Dynamics = vector_field,
          dt: float = 0.01, method: str = "tsit5", rtol: float = 1e-3, atol: float = 1e-6,
          max_steps: int = 4096, adjoint: str = "recursive", rk4_substeps: int = 5,
          checkpoints: int | None = None, flow: str = "free", flow_speed: float = 10.0,
          flow_decay: float = 10.0) -> jax.Array:
  """The FLOATER trajectory at ``t_k = k·dt`` for ``k = 0 .. num_positions−1``.

  Args:
    params: parameters of ``dynamics`` (for :func:`vector_field`: ``w1, b1, w2, b2``).
    p0: initial state ``p(0)``, any shape ``[..., d]`` (FLOATER: ``[3, layers, d]``); the
      whole array is one ODE state, so all of it is solved with the same steps.
    num_positions: static number of rows.
    dynamics: ``dynamics(params, t, p) -> dp/dt`` (default :func:`vector_field`; any vector
      field, e.g. a linear one, can be plugged in).
    dt: ``Δt``, the time between consecutive positions (official: 0.01).
    method: ``"tsit5"`` (adaptive, ``rtol``/``atol``) or ``"rk4"`` (torchdiffeq's 3/8-rule
      RK4 at fixed step ``dt / rk4_substeps``; official: ``Δt/5``).
    max_steps: bound on the adaptive solver's steps; exceeding it raises an error naming
      ``config.encoding.max_steps`` (never a hang, never NaNs). The fixed-step solve takes
      exactly ``rk4_substeps·(num_positions−1)`` steps and ignores it.
    adjoint: ``"recursive"`` (backprop through the solver) or ``"backsolve"`` (continuous
      adjoint, ``diffrax.BacksolveAdjoint``).
    checkpoints: for ``"recursive"``: number of checkpoints (None: diffrax's default,
      ``max_steps``, the fastest).
    flow: ``"free"`` (``dynamics`` as given), ``"tanh"``, ``"decay"`` or ``"sphere"``: the
      bounded forms of :func:`flow_field`, with ``c = flow_speed`` and ``λ = flow_decay``.
      The rows are read out through :func:`enforce_bound`, so the bound holds exactly.

  Returns:
    ``[num_positions, *p0.shape]`` in float32 (float64 if ``p0`` is): row ``k`` is ``p(k·dt)``.
  """
  ys, status, _ = solve_with_status(
      params, p0, num_positions, dynamics=dynamics, dt=dt, method=method, rtol=rtol, atol=atol,
      max_steps=max_steps, adjoint=adjoint, rk4_substeps=rk4_substeps, checkpoints=checkpoints,
      flow=flow, flow_speed=flow_speed, flow_decay=flow_decay)
  return eqx.branched_error_if(ys, status != OK, jnp.maximum(status - 1, 0),
                               failure_messages(num_positions, dt, max_steps), on_error="raise")


# Outcomes of a solve (``solve_with_status``).
OK, OUT_OF_STEPS, NONFINITE = 0, 1, 2


def failure_messages(num_positions: int, dt: float, max_steps: int) -> tuple[str, str]:
  """The errors for ``OUT_OF_STEPS`` and ``NONFINITE``, naming the config fields that fix them."""
  fill = dict(t1=(num_positions - 1) * dt, n=num_positions, max_steps=max_steps)
  return _MAX_STEPS_MSG.format(**fill), _NONFINITE_MSG.format(**fill)


def solve_with_status(params: Any, p0: jax.Array, num_positions: int, *,
                      dynamics: Dynamics = vector_field, dt: float = 0.01, method: str = "tsit5",
                      rtol: float = 1e-3, atol: float = 1e-6, max_steps: int = 4096,
                      adjoint: str = "recursive", rk4_substeps: int = 5,
                      checkpoints: int | None = None, flow: str = "free",
                      flow_speed: float = 10.0,
                      flow_decay: float = 10.0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """:func:`solve` without a host callback: ``(table, status, num_steps)``.

  ``status`` (int32) is ``OK``, ``OUT_OF_STEPS`` or ``NONFINITE``; on failure every row of
  ``table`` is NaN, so nothing downstream looks healthy. ``num_steps`` counts the solver's
  steps (accepted and rejected). The training step uses this form and reports both as metrics,
  so it never stops for Python mid-step (:func:`solve`'s check is a host callback).
  """
  p0 = jnp.asarray(p0)
  if num_positions < 1:
    raise ValueError(f"num_positions must be >= 1, got {num_positions}")
  if num_positions == 1:  # t0 == t1: nothing to integrate
    zero = jnp.zeros((), jnp.int32)
    return p0.astype(jnp.result_type(p0.dtype, jnp.float32))[None], zero, zero
  sol = _diffeqsolve(params, p0, num_positions, dynamics=dynamics, dt=dt, method=method,
                     rtol=rtol, atol=atol, max_steps=max_steps, adjoint=adjoint,
                     rk4_substeps=rk4_substeps, checkpoints=checkpoints, flow=flow,
                     flow_speed=flow_speed, flow_decay=flow_decay)
  ys = enforce_bound(sol.ys, p0.astype(sol.ys.dtype), _time_grid(num_positions, dt, sol.ys.dtype),
                     flow, speed=flow_speed, decay=flow_decay)
  failed = sol.result != diffrax.RESULTS.successful
  nonfinite = ~jnp.all(jnp.isfinite(ys))
  status = jnp.where(failed, OUT_OF_STEPS, jnp.where(nonfinite, NONFINITE, OK)).astype(jnp.int32)
  ys = jnp.where(status == OK, ys, jnp.nan)
  return ys, status, sol.stats["num_steps"].astype(jnp.int32)


def solve_stats(params: Any, p0: jax.Array, num_positions: int, *,
                dynamics: Dynamics = vector_field, dt: float = 0.01, method: str = "tsit5",
                rtol: float = 1e-3, atol: float = 1e-6, max_steps: int = 4096,
                adjoint: str = "recursive", rk4_substeps: int = 5,
                checkpoints: int | None = None, flow: str = "free", flow_speed: float = 10.0,
                flow_decay: float = 10.0) -> dict:
  """``{"num_steps", "num_accepted_steps", "num_rejected_steps"}`` (int arrays) of the solve
  that :func:`solve` does with the same arguments."""
  if num_positions == 1:
    zero = jnp.zeros((), jnp.int32)
    return {"num_steps": zero, "num_accepted_steps": zero, "num_rejected_steps": zero}
  sol = _diffeqsolve(params, jnp.asarray(p0), num_positions, dynamics=dynamics, dt=dt,
                     method=method, rtol=rtol, atol=atol, max_steps=max_steps, adjoint=adjoint,
                     rk4_substeps=rk4_substeps, checkpoints=checkpoints, flow=flow,
                     flow_speed=flow_speed, flow_decay=flow_decay)
  return {k: sol.stats[k] for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")}


def solver_stats(model_params: dict, setup: Any, *, train: bool = True) -> dict:
  """ODE solver steps of one forward pass of a run's model (for ``scripts/benchmark.py``).

  ``model_params`` is the whole model's parameter tree (``state["params"]``), ``setup`` a
  ``posenc.train.Setup``; the solve is the training step's (positions below
  ``setup.train_bound()``), or with ``train=False`` the longest evaluation bucket's.
  Returns Python ints: ``num_positions``, ``num_steps``, ``num_accepted_steps``,
  ``num_rejected_steps``.
  """
  bound = setup.train_bound() if train else max(setup.eval_bound(p) for _, p in setup.eval_buckets)
  enc = setup.model(bound).encoding
  p = model_params["encoding"]
  dyn = {k: p[f"ode_{k}"] for k in ("w1", "b1", "w2", "b2")}
  stats = solve_stats(dyn, p["ode_p0"], bound, **enc.solver_kwargs())
  return {"num_positions": int(bound), **{k: int(v) for k, v in stats.items()}}


def _norm(x: jax.Array) -> jax.Array:
  """``‖x‖`` over the last axis, scaled by ``max|x_i|`` first: a diverged trajectory's rows
  (components past 1e19) would overflow float32's sum of squares to Inf."""
  scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
  safe = jnp.where(scale > 0, scale, 1.0)
  return scale[..., 0] * jnp.sqrt(jnp.sum(jnp.square(x / safe), axis=-1))


def trajectory_report(table: jax.Array, train_positions: int) -> dict:
  """How a solved ``table`` ``[N, ..., d]`` grows past the first ``train_positions`` rows.

  Returns float32 scalars (norms per row ``[d]`` of every stream and layer):
  ``norm_max_train``: the largest ``‖p(k·Δt)‖`` over ``k < train_positions``;
  ``norm_last``: the largest ``‖p((N−1)·Δt)‖``; ``growth``: their ratio (≈1 for a bounded
  flow, orders of magnitude for a diverging one); ``drift_train_end`` and ``drift_last``: the
  mean ``‖p(k·Δt) − p(0)‖`` at ``k = train_positions − 1`` and ``k = N − 1`` (the curve that
  ``scripts/inspect_checkpoint.py --plots`` draws).
  """
  table = jnp.asarray(table, jnp.float32)
  n = table.shape[0]
  inside = min(max(int(train_positions), 1), n)
  flat = table.reshape(n, -1, table.shape[-1])
  norms = _norm(flat)  # [N, rows]
  drift = jnp.mean(_norm(flat - flat[:1]), axis=-1)  # [N]
  norm_max_train = jnp.max(norms[:inside])
  norm_last = jnp.max(norms[-1])
  return {"norm_max_train": norm_max_train, "norm_last": norm_last,
          "growth": norm_last / jnp.maximum(norm_max_train, _EPS),
          "drift_train_end": drift[inside - 1], "drift_last": drift[-1]}


_ANNOUNCED: set[str] = set()


def _announce(note: str) -> None:
  """Prints ``note`` once per process (``check`` runs at every ``setup`` of a run)."""
  if note not in _ANNOUNCED:
    _ANNOUNCED.add(note)
    print(f"note: {note}", flush=True)


def lookup(table: jax.Array, positions: jax.Array) -> jax.Array:
  """Rows of a solved ``table`` ``[N, ...]`` at int ``positions`` ``[B|1, L]`` -> ``[B|1, L, ...]``."""
  return jnp.take(table, positions, axis=0, mode="clip")


def growth_message(norm: float, encoding_config, num_positions: int) -> str:
  """A divergence explained by the state's growth: ``norm`` is the largest ``‖p(t_k)‖`` the
  training step solved over ``num_positions`` positions; names the flow that bounds it."""
  dt = float(encoding_config.dt)
  flow = resolve_flow(encoding_config.flow, num_positions, dt)
  t = (num_positions - 1) * dt
  what = (f"the FLOATER ODE state grew to norm {norm:.3g} (p(0) rows start near 1) over "
          f"positions 0..{num_positions - 1} (t <= {t:g}; with randomized positions or random "
          "offsets the training step solves up to config.positions.max_position), so its q/k/v "
          "terms swamp attention and its gradients")
  if flow == "free":
    return (f"{what}: the paper's free flow (encoding.flow={encoding_config.flow}) is unbounded "
            f"and is fit only up to t = {FREE_HORIZON:g} in the official code; use a bounded "
            "flow, --config.encoding.flow=decay (or tanh, sphere; flow=auto picks decay at this "
            f"range), or a smaller time step, --config.encoding.dt={free_dt(num_positions):g}")
  if flow == "tanh":
    return (f"{what}: the tanh flow bounds the speed, not the state (it drifts up to "
            f"flow_speed·t = {float(encoding_config.flow_speed) * t:g} per component); use "
            "--config.encoding.flow=decay or sphere, or lower --config.encoding.flow_speed")
  bound = ("max(|p_i(0)|, flow_speed/flow_decay) per component" if flow == "decay"
           else "‖p(0)‖ per row")
  return (f"{what}, although the {flow} flow bounds it by {bound}: the learned p(0) grew; "
          "lower --config.train.learning_rate")


# ----------------------------------------------------------------------------- module


class Encoding(_Base):
  """FLOATER position terms from one ODE solve per forward pass (see the module docstring).

  The table ``[max_position, streams, layers, d]`` is solved in ``setup`` up to the program's
  static bound ``dims.max_position`` and rows are gathered by position in the hooks. Evaluation
  programs instead read the cache (solved once for the longest length): the table for
  ``layer_input``, or for ``qkv`` the rows laid out heads-first, sliced when ``dims.contiguous``
  (:meth:`_project_cached`).
  """

  # "table": the solve [N, streams, layers, d] (layer_input); "rows_q" [layers, H, N, dh] and
  # "rows_kv" [2, layers, H, dh, N]: the qkv injection's rows in the order the attention reads
  # q, k and v (see ``project``).
  EVAL_CACHE = ("table", "rows_q", "rows_kv")
  # Gradients through diffrax's checkpointed loops fail inside shard_map (diffrax #765).
  SHARD_MAP = False

  injection: str = "qkv"          # "qkv" (official: q/k/v biases) or "layer_input" (paper, Eq. 6)
  method: str = "tsit5"           # "tsit5" (adaptive) or "rk4" (fixed step dt / rk4_substeps)
  dt: float = 0.01
  rtol: float = 1e-3
  atol: float = 1e-6
  max_steps: int = 4096           # bound on adaptive steps per solve (clear error beyond it)
  rk4_substeps: int = 5
  adjoint: str = "recursive"      # "recursive" (through the solver) or "backsolve"
  checkpoints: int = 0            # recursive adjoint's checkpoints; 0: diffrax's default
  sinusoidal_input: bool = True   # also add the sinusoidal table to the input (official)
  base: float = 10000.0
  flow: str = "auto"              # "free" (the paper's h); bounded: "decay", "tanh", "sphere";
                                  # "auto": free within FREE_HORIZON, else decay (resolve_flow)
  flow_speed: float = 10.0        # c: the bounded forms' speed limit |dp_i/dt| <= c
  flow_decay: float = 10.0        # λ of "decay": |p_i| <= max(|p_i(0)|, c/λ)

  @property
  def QKV_BIAS(self) -> bool:  # noqa: N802 — the contract's attribute name
    # The FLOATER terms ARE the q/k/v biases in the official form.
    return self.injection != "qkv"

  def check(self, max_position):
    opts = (("injection", INJECTIONS), ("method", METHODS), ("adjoint", ADJOINTS),
            ("flow", FLOW_OPTIONS))
    for field, allowed in opts:
      if getattr(self, field) not in allowed:
        raise ConfigError(f"config.encoding.{field}",
                          f"unknown value {getattr(self, field)!r}; choose one of {allowed}")
    if not self.dt > 0:
      raise ConfigError("config.encoding.dt", f"must be > 0, got {self.dt}")
    if self.max_steps < 1:
      raise ConfigError("config.encoding.max_steps", f"must be >= 1, got {self.max_steps}")
    if self.rk4_substeps < 1:
      raise ConfigError("config.encoding.rk4_substeps", f"must be >= 1, got {self.rk4_substeps}")
    if self.checkpoints < 0:
      raise ConfigError("config.encoding.checkpoints", f"must be >= 0, got {self.checkpoints}")
    for field in ("flow_speed", "flow_decay"):
      value = getattr(self, field)
      if not (np.isfinite(value) and value > 0):
        raise ConfigError(f"config.encoding.{field}", f"must be a finite number > 0, got {value}")
    if self.flow == "auto" and self.resolved_flow != "free":
      _announce(auto_flow_note(self.dims.train_positions, self.dt))

  @property
  def resolved_flow(self) -> str:
    """The flow form this module solves: ``flow`` with ``"auto"`` resolved (:func:`resolve_flow`)."""
    return resolve_flow(self.flow, self.dims.train_positions, self.dt)

  @classmethod
  def resolved(cls, encoding_config, train_positions: int) -> dict:
    """``{"flow": form}`` when ``encoding_config.flow`` is ``"auto"`` (what the run solves, for
    its log and ``results.json``), else ``{}``; ``train_positions`` as ``Dims.train_positions``."""
    if encoding_config.get("flow", "auto") != "auto":
      return {}
    return {"flow": resolve_flow("auto", train_positions, encoding_config.get("dt", cls.dt))}

  def setup(self):
    d, layers = self.dims.d_model, self.dims.num_layers
    streams = 3 if self.injection == "qkv" else 1
    # Names carry an "ode_" prefix so a warm start from any other scheme never matches them.
    xavier = nn.initializers.xavier_normal()
    zeros = nn.initializers.zeros_init()
    self.dynamics_params = {
        "w1": self.param("ode_w1", xavier, (d + 1, d), jnp.float32),
        "b1": self.param("ode_b1", zeros, (d,), jnp.float32),
        "w2": self.param("ode_w2", xavier, (d + 1, d), jnp.float32),
        "b2": self.param("ode_b2", zeros, (d,), jnp.float32),
    }
    self.p0 = self.param("ode_p0", _p0_init, (streams, layers, d), jnp.float32)
    # Once per forward pass, independent of the batch: every position below the static bound,
    # every layer and stream in one ODE state. Evaluation solves once for its longest length
    # and hands the table to every program through the "cache" collection (EVAL_CACHE).
    # The training step asks for "diagnostics": the solve's outcome and step count are then
    # reported as metrics instead of checked by a host callback inside the step.
    if self.has_variable("cache", "rows_kv"):
      self.rows_q = self.get_variable("cache", "rows_q")
      self.rows_kv = self.get_variable("cache", "rows_kv")
      return
    if self.has_variable("cache", "table"):
      self.table = self.get_variable("cache", "table")
    elif self.is_mutable_collection("diagnostics") and not self.is_initializing():
      self.table, status, steps = solve_with_status(
          self.dynamics_params, self.p0, self.dims.max_position, **self.solver_kwargs())
      self.put_variable("diagnostics", "ode_status", status)
      self.put_variable("diagnostics", "ode_steps", steps.astype(jnp.float32))
      # The largest row norm ‖p(t_k)‖ of the solve: a divergence names the flow's growth.
      self.put_variable("diagnostics", "ode_norm",
                        jnp.max(_norm(self.table.reshape(-1, self.table.shape[-1]))))
    else:
      self.table = solve(self.dynamics_params, self.p0, self.dims.max_position, **self.solver_kwargs())
    if self.injection == "qkv":  # what evaluation caches (computed only when read)
      n, heads, dh = self.dims.max_position, self.dims.num_heads, self.dims.head_dim
      heads_first = self.table.reshape(n, 3, self.dims.num_layers, heads, dh)
      self.rows_q = jnp.transpose(heads_first[:, 0], (1, 2, 0, 3))
      self.rows_kv = jnp.transpose(heads_first[:, 1:], (1, 2, 3, 4, 0))

  def eval_cache_names(self) -> tuple[str, ...]:
    return ("rows_q", "rows_kv") if self.injection == "qkv" else ("table",)

  @classmethod
  def explain_failure(cls, diagnostics: dict, encoding_config, num_positions: int) -> str | None:
    """Why training steps went NaN, from their ``diagnostics`` metrics; None if not FLOATER's.

    ``diagnostics``: metric name -> array over steps (and seeds); ``encoding_config``: the
    run's ``config.encoding``; ``num_positions``: rows the training step solves. A failed
    solve (``ode_status``) is named with the field that fixes it; otherwise, when the metrics
    show a NaN/Inf ``loss`` or ``grad_norm`` and the solved state grew past
    :data:`GROWTH_NORM` (``ode_norm``), that growth is named as the likely cause, with the
    flow that bounds it (:func:`growth_message`).
    """
    norms = np.asarray(diagnostics.get("ode_norm", 0.0), np.float64).reshape(-1)
    norms = norms[np.isfinite(norms)]
    grown = float(norms.max()) if norms.size and norms.max() > GROWTH_NORM else None
    status = np.asarray(diagnostics.get("ode_status", OK)).reshape(-1)
    bad = np.flatnonzero(status != OK)
    if bad.size:
      msgs = failure_messages(num_positions, encoding_config.dt, encoding_config.max_steps)
      msg = msgs[int(status[bad[0]]) - 1]
      if grown is not None:
        msg += "; before it, " + growth_message(grown, encoding_config, num_positions)
      return msg
    diverged = any(not np.all(np.isfinite(np.asarray(diagnostics[k])))
                   for k in ("loss", "grad_norm") if k in diagnostics)
    if diverged and grown is not None:
      return "likely cause: " + growth_message(grown, encoding_config, num_positions)
    return None

  def solver_kwargs(self) -> dict:
    """The options of :func:`solve` this module uses."""
    return dict(dt=self.dt, method=self.method, rtol=self.rtol, atol=self.atol,
                max_steps=self.max_steps, adjoint=self.adjoint, rk4_substeps=self.rk4_substeps,
                checkpoints=self.checkpoints or None, flow=self.resolved_flow,
                flow_speed=self.flow_speed, flow_decay=self.flow_decay)

  def report(self, train_positions: int) -> dict:
    """What ``results.json`` records of the trained trajectory (``posenc.train.encoding_report``):
    :func:`trajectory_report` of a solve up to ``dims.max_position`` (the longest evaluated
    position) against the first ``train_positions`` rows, plus ``ode_steps``, that solve's
    step count, and ``positions``, its length. Float32 scalars; no host callback. Applied
    with ``mutable=["diagnostics"]`` it reads the solve ``setup`` made (one solve, not two)."""
    if self.has_variable("diagnostics", "ode_steps"):
      table = self.table
      status = self.get_variable("diagnostics", "ode_status")
      steps = self.get_variable("diagnostics", "ode_steps")
    else:
      table, status, steps = solve_with_status(
          self.dynamics_params, self.p0, self.dims.max_position, **self.solver_kwargs())
    out = trajectory_report(table, train_positions)
    out.update(ode_steps=steps.astype(jnp.float32), ode_status=status.astype(jnp.float32),
               positions=jnp.asarray(self.dims.max_position, jnp.float32))
    return out

  def embed(self, x, positions):
    if not self.sinusoidal_input:
      return x
    return x + sinusoidal.table(positions, self.dims.d_model, self.base).astype(x.dtype)

  def layer_input(self, x, positions, layer):
    if self.injection != "layer_input":
      return x
    p_BxLxD = lookup(self.table[:, 0, layer], positions)
    return x + p_BxLxD.astype(x.dtype)

  def project(self, q, k, v, q_pos, k_pos, layer):
    if self.injection != "qkv":
      return q, k, v
    if self.has_variable("cache", "rows_kv"):
      return self._project_cached(q, k, v, q_pos, k_pos, layer)
    heads, dh = self.dims.num_heads, self.dims.head_dim
    table_Nx3xD = self.table[:, :, layer]
    rows_q = lookup(table_Nx3xD, q_pos)  # [B|1, L, 3, D]: q, k and v rows in one gather
    rows_kv = rows_q if k_pos is q_pos else lookup(table_Nx3xD, k_pos)

    def bias(rows_BxLx3xD, stream, like):
      return rows_BxLx3xD[..., stream, :].reshape(*rows_BxLx3xD.shape[:-2], heads, dh).astype(like.dtype)

    return q + bias(rows_q, 0, q), k + bias(rows_kv, 1, k), v + bias(rows_kv, 2, v)

  def _project_cached(self, q, k, v, q_pos, k_pos, layer):
    """Evaluation: rows from the cache, which holds them in the order XLA:CPU's attention
    reads q (``[B, H, L, dh]``) and k, v (``[B, H, dh, L]``).

    Each addition is fused into the copy that moves q, k or v heads-first. With rows laid out
    ``[L, H, dh]`` that copy read them with a stride of a whole row per position, which cost
    FLOATER 3-4% per evaluated sample over sinusoidal; read in the copy's own order they cost
    about 1%. Contiguous positions (``dims.contiguous``) take a slice, which keeps this layout;
    other positions gather along the position axis.
    """
    def rows(table, pos, axis):  # -> [B|1, L, H, dh]
      if self.dims.contiguous:
        got = jax.lax.dynamic_slice_in_dim(table, pos[0, 0], pos.shape[1], axis=axis)
        got = jnp.expand_dims(got, axis)  # the batch axis of the gather below
      else:
        got = jnp.take(table, pos, axis=axis, mode="clip")
      order = (1, 2, 0, 3) if axis == 1 else (2, 3, 0, 1)  # [H, B, L, dh] or [H, dh, B, L]
      return jnp.transpose(got, order)

    return (q + rows(self.rows_q[layer], q_pos, 1).astype(q.dtype),
            k + rows(self.rows_kv[0, layer], k_pos, 2).astype(k.dtype),
            v + rows(self.rows_kv[1, layer], k_pos, 2).astype(v.dtype))
