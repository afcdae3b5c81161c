"""FLOATER (Liu et al., ICML 2020): a neural ODE dp/dt = h(p, t) read at t_k = k·Δt.

Conventions checked against the official code (xuanqing94/FLOATER):
fairseq/modules/flow_funcs.py (``flow_func_linear``: Linear_t(d, d) -> ReLU -> Linear_t(d, d),
each Linear_t fed [x; t], xavier_normal weights, zero biases) and
fairseq/models/flow_transformer.py (``proj_bias`` [3, layers, d] xavier_uniform, time_dt 0.01,
``odeint(..., method="rk4", options={"step_size": time_dt / 5})``).
"""

import os
import re
import subprocess
import sys
import textwrap

import diffrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import train
from posenc.encodings import floater, sinusoidal
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers

DT = 0.01  # official time_dt


def _rotation_field(omega):
  """dp/dt = A·p, A block-diagonal generator of the (sin, cos) pairs at angular rate ``omega``.

  d sin(ωt)/dt = ω cos(ωt), d cos(ωt)/dt = −ω sin(ωt): with ω_m/Δt, p(kΔt) = table(k).
  """
  def field(params, t, p):
    del t
    s, c = p[..., 0::2], p[..., 1::2]
    return jnp.stack([params * c, -params * s], -1).reshape(p.shape)
  return field


@pytest.mark.parametrize("method,kwargs,tol", [
    ("rk4", {}, 1e-2),                                   # the official solver settings
    ("tsit5", {"rtol": 1e-6, "atol": 1e-8}, 1e-4),       # adaptive, tighter
])
def test_linear_rotation_dynamics_reproduce_the_sinusoidal_table(method, kwargs, tol):
  d, n = 16, 128
  omega = sinusoidal.frequencies(d) / DT
  p0 = jnp.tile(jnp.array([0.0, 1.0]), d // 2)  # table(0) = [sin 0, cos 0, ...]
  rows = floater.solve(omega, p0, n, dynamics=_rotation_field(omega), dt=DT, method=method,
                       max_steps=2000, **kwargs)
  assert rows.shape == (n, d) and rows.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(rows - sinusoidal.table(jnp.arange(n), d))))
  assert err <= tol, err
  if method == "rk4":
    stats = floater.solve_stats(omega, p0, n, dynamics=_rotation_field(omega), method="rk4",
                                max_steps=2000)
    assert int(stats["num_steps"]) == 5 * (n - 1)  # step Δt/5 from t=0 to (n−1)·Δt


def test_rk4_is_torchdiffeqs_three_eighths_rule():
  """One step equals torchdiffeq's rk4_alt_step_func (torchdiffeq/_impl/rk_common.py), the
  official solver: k2 at t+h/3, k3 at t+2h/3 with y+h(k2−k1/3), k4 with y+h(k1−k2+k3),
  y1 = y + h(k1 + 3k2 + 3k3 + k4)/8."""
  d, h = 4, 0.05
  params = jax.tree_util.tree_map(lambda w: 2.0 * w, _dyn(d))
  y = floater.init_p0(jax.random.PRNGKey(1), 1, 1, d)[0, 0]
  f = lambda t, y: floater.vector_field(params, t, y)
  k1 = f(0.0, y)
  k2 = f(h / 3, y + h * k1 / 3)
  k3 = f(2 * h / 3, y + h * (k2 - k1 / 3))
  k4 = f(h, y + h * (k1 - k2 + k3))
  want = y + h * (k1 + 3 * (k2 + k3) + k4) / 8
  got = floater.solve(params, y, 2, dt=h, method="rk4", rk4_substeps=1)
  np.testing.assert_allclose(got[1], want, rtol=1e-6, atol=1e-7)


def _dyn(d, seed=0, scale=1.0):
  params = floater.init_dynamics(jax.random.PRNGKey(seed), d)
  return jax.tree_util.tree_map(lambda w: w * scale, params)


def test_vector_field_is_the_official_two_layer_time_augmented_mlp():
  d = 6
  params = _dyn(d)
  params = {**params, "b1": jnp.arange(d) * 0.1, "b2": -jnp.arange(d) * 0.2}
  p = jax.random.normal(jax.random.PRNGKey(1), (3, 2, d))
  t = 0.37
  # Written with the explicit concatenation [p; t] of Linear_t (kernel layout [d+1, d]).
  aug = lambda x: jnp.concatenate([x, jnp.full(x.shape[:-1] + (1,), t)], -1)
  hidden = jax.nn.relu(aug(p) @ params["w1"] + params["b1"])
  want = aug(hidden) @ params["w2"] + params["b2"]
  np.testing.assert_allclose(floater.vector_field(params, t, p), want, rtol=1e-5, atol=1e-6)
  # Official initialisation: xavier-normal weights W ∈ R^{d×(d+1)} (std sqrt(2/(2d+1))), zero biases.
  big = floater.init_dynamics(jax.random.PRNGKey(2), 256)
  assert big["w1"].shape == (257, 256) and not jnp.any(big["b1"]) and not jnp.any(big["b2"])
  np.testing.assert_allclose(jnp.std(big["w2"]), np.sqrt(2 / (2 * 256 + 1)), rtol=0.02)
  # p(0): torch's xavier_uniform_ on [3, layers, d]: bound sqrt(6 / (layers·d + 3·d)).
  p0 = floater.init_p0(jax.random.PRNGKey(3), 3, 4, 64)
  bound = np.sqrt(6 / (4 * 64 + 3 * 64))
  assert p0.shape == (3, 4, 64) and float(jnp.max(jnp.abs(p0))) <= bound
  assert float(jnp.max(jnp.abs(p0))) > 0.9 * bound


@pytest.mark.parametrize("method,kwargs,tol", [
    ("rk4", {}, 1e-6),                                  # the same steps: equal up to rounding
    ("tsit5", {"rtol": 1e-7, "atol": 1e-9}, 1e-5),      # adaptive: equal to solver tolerance
])
def test_prefix_of_a_long_solve_equals_a_short_solve(method, kwargs, tol):
  d = 8
  params, p0 = _dyn(d), floater.init_p0(jax.random.PRNGKey(1), 3, 2, d)
  short = jax.jit(lambda: floater.solve(params, p0, 10, method=method, **kwargs))()
  long = jax.jit(lambda: floater.solve(params, p0, 40, method=method, **kwargs))()
  assert long.shape == (40, 3, 2, d)
  np.testing.assert_array_equal(long[0], p0)  # row 0 is p(0)
  np.testing.assert_allclose(long[:10], short, atol=tol)


def _module(num_layers=2, d=16, heads=2, max_position=24, causal=False, **kw):
  dims = Dims(d_model=d, num_heads=heads, num_layers=num_layers, causal=causal,
              max_position=max_position)
  return floater.Encoding(dims=dims, **kw)


def _init(module, length=8):
  x = jnp.zeros((1, length, module.dims.d_model))
  pos = jnp.arange(length, dtype=jnp.int32)[None]
  return module.init(jax.random.PRNGKey(0), x, pos, method="embed")["params"]


def test_dynamics_are_shared_by_all_layers_only_p0_grows():
  shapes = {n: jax.tree_util.tree_map(jnp.shape, jax.eval_shape(lambda n=n: _init(_module(n))))
            for n in (1, 4)}
  dyn = {k: v for k, v in shapes[1].items() if k != "ode_p0"}
  assert dyn == {k: v for k, v in shapes[4].items() if k != "ode_p0"}
  assert dyn == {"ode_w1": (17, 16), "ode_b1": (16,), "ode_w2": (17, 16), "ode_b2": (16,)}
  assert shapes[1]["ode_p0"] == (3, 1, 16) and shapes[4]["ode_p0"] == (3, 4, 16)
  layer_input = jax.eval_shape(lambda: _init(_module(4, injection="layer_input")))
  assert layer_input["ode_p0"].shape == (1, 4, 16)


def test_one_solve_per_forward_pass_and_rows_gathered_by_position(monkeypatch):
  calls = []
  real = floater.solve
  monkeypatch.setattr(floater, "solve", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
  m = _module(num_layers=3, max_position=40)
  params = jax.jit(lambda: _init(m))()
  calls.clear()
  # Randomized (sorted, gappy) positions, per example; q/k/v of every layer.
  pos = jnp.array([[0, 5, 17, 39], [2, 3, 30, 31]], jnp.int32)
  k_pos = jnp.array([[1, 4, 9, 38]], jnp.int32)  # [1, L]: shared by the batch
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 4, 2, 8)) for i in range(3))
  x = jnp.ones((2, 4, 16))

  @jax.jit
  def forward(params):
    def hooks(mod):
      return (mod.embed(x, pos), [mod.project(q, k, v, pos, pos, layer) for layer in range(3)],
              mod.project(q, k, v, pos, k_pos, 1))
    return m.apply({"params": params}, method=hooks)

  embedded, out, cross = forward(params)
  assert calls == [40]  # once, up to the static bound, for every layer and q/k/v
  dyn = {n: params[f"ode_{n}"] for n in ("w1", "b1", "w2", "b2")}
  table = jax.jit(lambda: real(dyn, params["ode_p0"], 40, **m.solver_kwargs()))()
  for layer in range(3):
    for stream, got in enumerate(out[layer]):
      want = table[pos, stream, layer].reshape(2, 4, 2, 8)
      np.testing.assert_allclose(got - (q, k, v)[stream], want, atol=1e-6)
  for stream, got in enumerate(cross):  # q rows at q_pos, k and v rows at k_pos
    rows = table[pos if stream == 0 else k_pos, stream, 1].reshape(-1, 4, 2, 8)
    np.testing.assert_allclose(got - (q, k, v)[stream], jnp.broadcast_to(rows, got.shape), atol=1e-6)
  # The input encoding is the sinusoidal table (official: fairseq's embed_positions kept).
  np.testing.assert_allclose(embedded, x + sinusoidal.table(pos, 16), atol=1e-6)


def test_qkv_injection_drops_the_projection_biases_layer_input_keeps_them():
  from posenc.model import ModelConfig, Transformer
  cfg = ModelConfig(vocab_size=5, output_vocab_size=3, d_model=16, num_heads=2, num_layers=2,
                    d_ff=16, dropout=0.0)
  tokens = jnp.zeros((1, 6), jnp.int32)
  pos = jnp.arange(6, dtype=jnp.int32)[None]
  for injection, has_bias in (("qkv", False), ("layer_input", True)):
    model = Transformer(cfg, _module(injection=injection, max_position=6))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, pos,
                                               jnp.ones((1, 6), bool)))["params"]
    assert ("bias" in params["layer1_query"]) == has_bias
    assert model.encoding.QKV_BIAS == has_bias


def test_gradients_match_finite_differences():
  with jax.enable_x64(True):
    d, n = 4, 6
    base = jax.tree_util.tree_map(lambda w: w.astype(jnp.float64), _dyn(d))
    p0 = floater.init_p0(jax.random.PRNGKey(1), 3, 1, d).astype(jnp.float64)
    weights = jnp.sin(jnp.arange(n * 3 * d, dtype=jnp.float64)).reshape(n, 3, 1, d)

    def loss(params, p0, method="rk4", **kw):
      return jnp.sum(weights * floater.solve(params, p0, n, method=method, **kw))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2,
                   static_argnames=("adjoint", "rtol", "atol"))
    # Large weights, so ReLUs switch along the trajectory. Backprop through the fixed-step
    # solver is the exact derivative of the discrete map.
    params = {**jax.tree_util.tree_map(lambda w: 3.0 * w, base), "b1": base["b1"] + 0.3}
    grads = grad(params, p0)
    for leaf in jax.tree_util.tree_leaves(grads):
      assert leaf.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(leaf)))
    f = jax.jit(loss)
    eps = 1e-6
    for name, idx in (("w1", (1, 2)), ("w1", (d, 0)), ("w2", (3, 1)), ("b1", (2,)), ("b2", (0,))):
      x = params[name][idx]
      plus = f({**params, name: params[name].at[idx].set(x + eps)}, p0)
      minus = f({**params, name: params[name].at[idx].set(x - eps)}, p0)
      np.testing.assert_allclose(grads[0][name][idx], (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-9)
    plus, minus = f(params, p0.at[2, 0, 1].add(eps)), f(params, p0.at[2, 0, 1].add(-eps))
    np.testing.assert_allclose(grads[1][2, 0, 1], (plus - minus) / (2 * eps), rtol=1e-6)

    # Backprop through the adaptive solver (the default) and the continuous adjoint (the
    # official code's odeint_adjoint) converge to the same ODE gradient. Biases keep every ReLU
    # active here: across a ReLU kink any discretisation's gradient converges at first order only.
    smooth = {**base, "b1": base["b1"] + 10.0}
    ref = grad(smooth, p0)
    for adjoint in ("recursive", "backsolve"):
      got = grad(smooth, p0, "tsit5", adjoint=adjoint, rtol=1e-10, atol=1e-12)
      for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


def test_jit_and_vmap():
  d = 8
  params = _dyn(d)
  p0s = floater.init_p0(jax.random.PRNGKey(1), 2, 1, d)[:, 0]  # two independent initial values
  one = jax.jit(lambda p: floater.solve(params, p, 12))
  batched = jax.jit(jax.vmap(one))(p0s)
  assert batched.shape == (2, 12, d)
  for i in range(2):  # vmap batches the two solves; each keeps its own solution
    np.testing.assert_allclose(batched[i], one(p0s[i]), atol=1e-5)


def test_stiff_dynamics_raise_a_clear_error_not_a_hang_or_nans():
  d = 8
  stiff, p0 = _dyn(d, scale=1e3), floater.init_p0(jax.random.PRNGKey(1), 3, 1, d)
  with pytest.raises(Exception, match="FLOATER ODE solver") as err:
    jax.block_until_ready(jax.jit(lambda w: floater.solve(w, p0, 50, max_steps=16))(stiff))
  assert "config.encoding.max_steps" in str(err.value)
  # Fixed steps cannot run out of steps; a blow-up to Inf/NaN is refused instead.
  with pytest.raises(Exception, match="FLOATER ODE solver.*NaN/Inf"):
    jax.block_until_ready(floater.solve(_dyn(d, scale=1e6), p0 * 1e6, 50, method="rk4"))
  with pytest.raises(ConfigError, match="config.encoding.max_steps"):
    _module(max_steps=0).check(64)
  with pytest.raises(ConfigError, match="config.encoding.injection"):
    _module(injection="input").check(8)


# ----------------------------------------------------------------------------- bounded flows

TRAIN_POSITIONS = 32  # the default preset's training program: lengths up to 16, padded to 32


@pytest.mark.parametrize("flow,speed,decay", [
    ("tanh", 10.0, 10.0), ("decay", 10.0, 10.0), ("decay", 3.0, 0.5), ("sphere", 10.0, 10.0)])
def test_bounded_flows_keep_their_bound_over_100x_the_training_length(flow, speed, decay):
  """Random dynamics at 3x their initial scale, solved to 100x the training positions
  (t = 32): each bounded form stays within its documented bound at every position, with few
  solver steps, and the solved flow itself keeps it to the solver's tolerance (the read-out,
  ``enforce_bound``, only removes that error). The free flow does not even finish."""
  d, n = 8, 100 * TRAIN_POSITIONS
  params, p0 = _dyn(d, seed=3, scale=3.0), floater.init_p0(jax.random.PRNGKey(4), 3, 2, d)
  kw = dict(dt=DT, method="tsit5", rtol=1e-3, atol=1e-6, max_steps=4096, adjoint="recursive",
            rk4_substeps=5, checkpoints=None)  # solve_with_status's defaults
  sol = jax.jit(lambda w, p: floater._diffeqsolve(
      w, p, n, dynamics=floater.vector_field, flow=flow, flow_speed=speed, flow_decay=decay,
      **kw))(params, p0)
  assert int(sol.stats["num_steps"]) < 1024 and bool(jnp.all(jnp.isfinite(sol.ys)))
  ts = np.arange(n, dtype=np.float32) * np.float32(DT)
  ys = np.asarray(floater.enforce_bound(sol.ys, p0, ts, flow, speed=speed, decay=decay), np.float64)
  raw, p0 = np.asarray(sol.ys, np.float64), np.asarray(p0, np.float64)
  t = ts.astype(np.float64)[:, None, None, None]
  ulp = 1e-6  # float32 rounding of the read-out
  if flow == "tanh":  # |p_i(t) − p_i(0)| <= c·t
    assert np.all(np.abs(ys - p0) <= speed * t * (1 + ulp) + ulp)
    assert np.max(np.abs(ys[-1] - p0)) > 0.5 * speed * t[-1, 0, 0, 0]  # the bound is not vacuous
  elif flow == "decay":  # |p_i(t)| <= max(|p_i(0)|, c/λ)
    bound = np.maximum(np.abs(p0), speed / decay)
    assert np.all(np.abs(ys) <= bound * (1 + ulp))
    assert np.max(np.abs(ys[-1]) / bound) > 0.5  # not vacuous: the state does not just decay
  else:  # ‖p(t)‖ = ‖p(0)‖ per row
    np.testing.assert_allclose(np.linalg.norm(ys, axis=-1),
                               np.broadcast_to(np.linalg.norm(p0, axis=-1), ys.shape[:-1]), rtol=1e-5)
    assert np.min(ys[-1] * p0) < 0  # it moved (the norm is kept, not the state)
  # The read-out corrects only the solver's error (Tsit5 at rtol 1e-3: within ~1%).
  np.testing.assert_allclose(raw, ys, rtol=0.02, atol=0.02 * np.max(np.abs(ys)))
  report = {k: float(v) for k, v in floater.trajectory_report(ys, TRAIN_POSITIONS).items()}
  assert report["growth"] < (1.0 + 1e-5 if flow == "sphere" else 1e3)
  if flow == "tanh":  # the same dynamics, unconstrained: out of steps before t = 32
    _, status, _ = jax.jit(lambda w, p: floater.solve_with_status(w, p, n))(params, p0)
    assert int(status) == floater.OUT_OF_STEPS


def test_flow_fields_are_the_documented_formulas():
  d, c, lam = 6, 2.0, 0.5
  params = _dyn(d, seed=5, scale=4.0)
  p = jax.random.normal(jax.random.PRNGKey(6), (3, 2, d))
  t = 0.7
  h = floater.vector_field(params, t, p)
  field = lambda flow: floater.flow_field(floater.vector_field, flow, speed=c, decay=lam)(params, t, p)
  np.testing.assert_array_equal(field("free"), h)
  np.testing.assert_allclose(field("tanh"), c * jnp.tanh(h / c), rtol=1e-6)
  np.testing.assert_allclose(field("decay"), c * jnp.tanh(h / c) - lam * p, rtol=1e-6, atol=1e-6)
  v = c * jnp.tanh(h / c)
  sphere = field("sphere")
  np.testing.assert_allclose(jnp.sum(sphere * p, -1), 0.0, atol=1e-5)  # tangent: d‖p‖²/dt = 0
  radial = p * jnp.sum(v * p, -1, keepdims=True) / jnp.sum(p * p, -1, keepdims=True)
  np.testing.assert_allclose(sphere + radial, v, rtol=1e-5, atol=1e-6)  # v minus its radial part
  # Small h: the saturated forms are the free form (speed c far above |h|).
  small = jax.tree_util.tree_map(lambda w: 1e-3 * w, params)
  np.testing.assert_allclose(floater.flow_field(floater.vector_field, "tanh", speed=10.0)(small, t, p),
                             floater.vector_field(small, t, p), rtol=1e-5, atol=1e-9)
  with pytest.raises(ConfigError, match="config.encoding.flow"):
    _module(flow="bounded").check(8)
  from configs import floater as floater_config  # "auto": the paper's free flow in range
  for preset in ("default", "paper", "smoke"):
    assert floater_config.get_config(preset).encoding.flow == "auto"
  for field_name in ("flow_speed", "flow_decay"):
    with pytest.raises(ConfigError, match=f"config.encoding.{field_name}"):
      _module(**{field_name: 0.0}).check(8)


def test_trajectory_report_measures_growth_past_the_training_positions():
  n, d = 10, 4
  rows = np.ones((n, 3, 2, d), np.float32)
  rows[6:] *= np.arange(1, 5, dtype=np.float32)[:, None, None, None] * 10  # grows after row 5
  report = floater.trajectory_report(rows, 6)
  np.testing.assert_allclose(float(report["norm_max_train"]), 2.0)  # ‖(1, 1, 1, 1)‖
  np.testing.assert_allclose(float(report["norm_last"]), 80.0)
  np.testing.assert_allclose(float(report["growth"]), 40.0)
  np.testing.assert_allclose(float(report["drift_train_end"]), 0.0)
  np.testing.assert_allclose(float(report["drift_last"]), 78.0)
  # A diverged trajectory (components past 1e19, whose squares overflow float32) stays finite.
  rows[-1] = 1e30
  report = floater.trajectory_report(rows, 6)
  np.testing.assert_allclose(float(report["norm_last"]), 2e30, rtol=1e-5)
  np.testing.assert_allclose(float(report["growth"]), 1e30, rtol=1e-5)


# ----------------------------------------------------------------------------- end to end

def _host_callbacks(compiled) -> int:
  return len(re.findall(r'custom_call_target="[^"]*callback[^"]*"', compiled.as_text()))


def test_training_step_has_no_host_callbacks_and_reports_the_solver():
  """The jitted training step never stops for Python: diffrax's checks resolve at trace time
  (host-constant time grid) and the solve's outcome is a metric, not an ``eqx.error_if``."""
  d = 8
  params, p0 = _dyn(d), floater.init_p0(jax.random.PRNGKey(1), 3, 1, d)
  # The detector works: the raising form does stop for the host.
  assert _host_callbacks(jax.jit(lambda w: floater.solve(w, p0, 12)).lower(params).compile()) >= 1
  ys, status, steps = jax.jit(lambda w: floater.solve_with_status(w, p0, 12))(params)
  np.testing.assert_array_equal(ys, floater.solve(params, p0, 12))
  assert int(status) == floater.OK and int(steps) >= 1
  s = train.setup(helpers.config("floater"))
  keys = train.root_keys(0)
  state = train.init_state(s, keys["init"])
  step = jax.jit(train.make_train_step(s)).lower(state, keys["train"]).compile()
  assert _host_callbacks(step) == 0
  _, metrics = step(state, keys["train"])
  assert int(metrics["ode_status"]) == floater.OK and float(metrics["ode_steps"]) >= 1
  # ode_norm: the largest row norm of the step's solve (what a divergence message reads).
  enc = state["params"]["encoding"]
  table = floater.solve({k: enc[f"ode_{k}"] for k in ("w1", "b1", "w2", "b2")}, enc["ode_p0"],
                        s.train_bound())
  np.testing.assert_allclose(float(metrics["ode_norm"]),
                             np.linalg.norm(np.asarray(table), axis=-1).max(), rtol=1e-5)
  # A failed solve is NaN everywhere, with its status (no host callback to raise it).
  ys, status, _ = floater.solve_with_status(_dyn(d, scale=1e3), p0, 50, max_steps=16)
  assert int(status) == floater.OUT_OF_STEPS and bool(jnp.all(jnp.isnan(ys)))


def test_entry_points_trace_the_step_without_host_callbacks():
  """JAX runs a program whose traced form has a host callback synchronously (no queuing of the
  next step), even when XLA folds the callback away; experiments/ sets EQX_ON_ERROR=nan so that
  diffrax's input checks trace as NaN guards. Fresh process: equinox reads it at import."""
  code = textwrap.dedent("""
      import experiments, jax
      from posenc import train
      from tests import helpers
      s = train.setup(helpers.config("floater"))
      keys = train.root_keys(0)
      state = train.init_state(s, keys["init"])
      print("CALLBACKS", str(jax.jit(train.make_train_step(s)).trace(state, keys["train"]).jaxpr).count("callback"))
  """)
  env = {**{k: v for k, v in os.environ.items() if k != "EQX_ON_ERROR"}, "JAX_PLATFORMS": "cpu"}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
  assert "CALLBACKS 0" in out.stdout, out.stdout + out.stderr[-2000:]


def test_a_solver_failure_in_the_evaluation_table_is_a_clear_error():
  # The evaluation table's program reports the solve too (no host callback); the host raises.
  # The free flow: a bounded one's speed limit keeps even these weights solvable.
  s = train.setup(helpers.config("floater", **{"encoding.max_steps": 16, "encoding.flow": "free"}))
  params = train.init_state(s, jax.random.PRNGKey(0))["params"]
  assert set(train.eval_cache(s, params)["cache"]["encoding"]) == {"rows_q", "rows_kv"}
  enc = dict(params["encoding"])
  enc["ode_w1"], enc["ode_w2"] = enc["ode_w1"] * 1e3, enc["ode_w2"] * 1e3
  with pytest.raises(train.SchemeRuntimeError, match=r"FLOATER ODE solver: the solve to t=\S+ "
                     r"\(\d+ positions\) did not finish within max_steps=16 .*config\.encoding\."
                     r"max_steps") as info:
    train.eval_cache(s, {**params, "encoding": enc})
  assert train.runtime_error_message(info.value) == str(info.value).rstrip(" .;")


def test_a_solver_failure_during_training_names_the_field_and_keeps_the_last_checkpoint(tmp_path):
  # A large learning rate makes h stiff within a few steps; max_steps=4 is what the first
  # solves need, so a later solve runs out of steps.
  c = helpers.config("floater", **{"train.steps": 30, "train.learning_rate": 0.5,
                                   "encoding.max_steps": 4, "train.log_every": 1,
                                   "encoding.flow": "free",
                                   "checkpoint.every_steps": 1, "eval.num_buckets": 1})
  c.workdir = str(tmp_path / "stiff")
  with pytest.raises(train.TrainingDiverged) as info:
    train.train_and_evaluate(c, log=lambda *_: None)
  msg = str(info.value)
  found = re.match(r"training failed at step (\d+): FLOATER ODE solver: .* did not finish within "
                   r"max_steps=4 .*config\.encoding\.max_steps.*; the last good checkpoint "
                   r"\(step (\d+)\) is kept$", msg)
  assert found and "\n" not in msg, msg
  failed, kept = int(found.group(1)), int(found.group(2))
  assert failed >= 2 and kept == failed - 1
  assert train.load_params(c.workdir)[1] == kept
  assert not (tmp_path / "stiff" / "results.json").exists()


_FAST_EVAL = {"eval.num_buckets": 1}  # one evaluation program per run keeps the suite quick


def test_warm_start_from_a_sinusoidal_run_end_to_end(tmp_path):
  """The paper's protocol: fine-tune FLOATER from a trained sinusoidal Transformer (encoder)."""
  sin = helpers.config("sinusoidal", **_FAST_EVAL)
  sin.workdir = str(tmp_path / "sin")
  train.train_and_evaluate(sin, log=lambda *_: None)
  c = helpers.config("floater", **_FAST_EVAL, **{"init.from_workdir": sin.workdir})
  c.workdir = str(tmp_path / "floater")
  lines = []
  results = train.train_and_evaluate(c, log=lines.append)
  helpers.check_smoke_results(results)
  assert results["mode"] == "encoder"
  line = next(l for l in lines if l.startswith("warm start"))
  source, _ = train.load_params(sin.workdir)
  target = jax.eval_shape(lambda: train.init_state(train.setup(c), jax.random.PRNGKey(0)))["params"]
  _, copied, fresh = train.warm_start(target, source, sin.workdir, check_only=True)
  # Everything but FLOATER's own parameters comes from the sinusoidal run.
  assert sorted(fresh) == [f"encoding/ode_{n}" for n in ("b1", "b2", "p0", "w1", "w2")]
  assert f"{len(copied)} parameter arrays" in line and "encoding/ode_" in line
  assert "embed/embedding" in copied and "layer0_query/kernel" in copied


def test_smoke_decoder_with_randomized_positions_layer_input_and_sphere_flow(tmp_path):
  """One end-to-end run covers the decoder, randomized positions, layer-input injection and
  the sphere flow (the encoder with the defaults runs end to end in the warm-start test
  above), and the growth report results.json records."""
  lines = []
  c = helpers.config("floater", **_FAST_EVAL, **{
      "model.causal": True, "positions.kind": "randomized", "positions.max_position": 64,
      "encoding.injection": "layer_input", "encoding.flow": "sphere"})
  c.workdir = str(tmp_path / "floater-run")
  results = train.train_and_evaluate(c, log=lines.append)
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"
  assert os.path.exists(tmp_path / "floater-run" / "DONE")
  # results.json records the trajectory at the longest evaluated position against the
  # training positions: the sphere flow keeps every row's norm, so the growth is 1.
  report = results["encoding_report"]
  s = train.setup(c)
  assert report["positions"] == max(s.eval_bound(p) for _, p in s.eval_buckets)
  assert report["ode_status"] == floater.OK and report["ode_steps"] >= 1
  np.testing.assert_allclose(report["growth"], 1.0, rtol=1e-5)
  params, _ = train.load_params(c.workdir)
  enc = params["encoding"]
  dyn = {n: enc[f"ode_{n}"] for n in ("w1", "b1", "w2", "b2")}
  table = floater.solve(dyn, enc["ode_p0"], int(report["positions"]), flow="sphere")
  want = floater.trajectory_report(table, s.train_bound())
  for key, value in want.items():
    np.testing.assert_allclose(report[key], float(value), rtol=1e-4, atol=1e-6)
  assert any(l.startswith("floater: ") and "growth 1, " in l for l in lines), lines


def test_evaluation_solves_once_and_reuses_the_table():
  """The table solved once for the longest evaluated length gives the same logits as each
  program solving its own (shorter) table."""
  from posenc import train as train_lib
  c = helpers.config("floater", **{"eval.max_length": 12, "eval.num_buckets": 2})
  s = train_lib.setup(c)
  params = train_lib.init_state(s, jax.random.PRNGKey(0))["params"]
  cache = train_lib.eval_cache(s, params)
  rows_q, rows_kv = (cache["cache"]["encoding"][n] for n in ("rows_q", "rows_kv"))
  longest = max(s.eval_bound(p) for _, p in s.eval_buckets)
  layers, heads, dh = c.model.num_layers, c.model.num_heads, c.model.d_model // c.model.num_heads
  assert rows_q.shape == (layers, heads, longest, dh)
  assert rows_kv.shape == (2, layers, heads, dh, longest)
  _, padded = s.eval_buckets[0]
  model = s.model(s.eval_bound(padded))
  tokens = jnp.full((2, padded), 4, jnp.int32)
  pos = jnp.arange(padded)[None]
  valid = jnp.ones((2, padded), bool)
  own = model.apply({"params": params}, tokens, pos, valid)
  reused = model.apply({"params": params, **cache}, tokens, pos, valid)
  np.testing.assert_allclose(np.asarray(reused), np.asarray(own), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("injection", ["qkv", "layer_input"])
def test_cached_rows_equal_the_solved_table_by_slice_and_by_gather(injection):
  """Evaluation reads q/k/v rows from the cache, heads-first: sliced when the program's
  positions are contiguous (``dims.contiguous``), gathered otherwise. Both give the same
  logits as the model solving its own table, for contiguous, offset and gappy positions."""
  c = helpers.config("floater", **{"eval.max_length": 12, "eval.num_buckets": 1,
                                   "encoding.injection": injection})
  s = train.setup(c)
  params = train.init_state(s, jax.random.PRNGKey(0))["params"]
  cache = train.eval_cache(s, params)
  assert set(cache["cache"]["encoding"]) == ({"rows_q", "rows_kv"} if injection == "qkv" else {"table"})
  bound = max(s.eval_bound(p) for _, p in s.eval_buckets)
  length = 8
  tokens = jnp.full((2, length), 4, jnp.int32)
  valid = jnp.ones((2, length), bool)
  contiguous = [jnp.arange(length)[None], 3 + jnp.arange(length)[None]]
  gappy = [jnp.array([[0, 1, 4, 5, 6, 9, 10, 12], [1, 2, 3, 5, 8, 11, 12, 13]], jnp.int32)]
  # One program per model and positions shape (the positions are arguments, not constants).
  own = jax.jit(s.model(bound).apply)
  want = [own({"params": params}, tokens, pos, valid) for pos in contiguous + gappy]
  for flag, cases in ((True, contiguous), (False, contiguous + gappy)):
    model = s.model(bound, contiguous=flag)
    assert model.encoding.dims.contiguous is flag
    apply = jax.jit(lambda p, ca, pos, m=model: m.apply({"params": p, **ca}, tokens, pos, valid))
    for pos, expected in zip(cases, want):
      np.testing.assert_allclose(np.asarray(apply(params, cache, pos)), np.asarray(expected),
                                 rtol=1e-5, atol=1e-5)


def test_decoding_steps_with_cached_rows_match_the_full_forward():
  """Incremental decoding (one new token per step, its rows sliced at its own position)
  reads the same cached rows as the full forward pass (each step rewrites its slot with the
  token that is already there)."""
  from posenc import decoding
  c = helpers.config("floater", **{"model.causal": True, "task.name": "reverse_string",
                                   "eval.max_length": 10, "eval.num_buckets": 1})
  s = train.setup(c)
  params = train.init_state(s, jax.random.PRNGKey(1))["params"]
  cache = train.eval_cache(s, params)
  (lengths, padded), = s.eval_buckets
  model = s.model(s.eval_bound(padded), contiguous=True)
  variables = {"params": params, **cache}
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, padded), 3, 6)
  pos = jnp.arange(padded)[None]
  valid = jnp.ones((2, padded), bool)
  full = model.apply(variables, tokens, pos, valid)
  _, kv = model.apply(variables, tokens, pos, valid, decode="prefill", mutable=["kv"])
  for i in range(3, 6):
    step, kv = model.apply({**variables, **kv}, tokens[:, i:i + 1], pos, valid, decode="step",
                           index=i, mutable=["kv"])
    np.testing.assert_allclose(np.asarray(step[:, 0]), np.asarray(full[:, i]), rtol=1e-4, atol=1e-4)


def test_evaluation_slices_the_cached_rows_and_scores_as_with_gathers(monkeypatch):
  c = helpers.config("floater", **{"eval.max_length": 12, "eval.num_buckets": 2,
                                   "eval.samples_per_length": 4, "eval.batch_size": 4})
  s = train.setup(c)
  params = train.init_state(s, jax.random.PRNGKey(0))["params"]
  key = jax.random.PRNGKey(3)
  seen, real_model = [], train.Setup.model
  monkeypatch.setattr(train.Setup, "model", lambda self, bound, contiguous=False:
                      seen.append(contiguous) or real_model(self, bound, contiguous=contiguous))
  sliced = train.evaluate(s, params, key, log=None)
  assert seen.count(True) == len(s.eval_buckets)  # every evaluation program slices
  monkeypatch.setattr(train.positions_lib, "shared_contiguous", lambda *a, **k: False)
  gathered = train.evaluate(s, params, key, log=None)
  assert sliced.keys() == gathered.keys()
  np.testing.assert_allclose(list(sliced.values()), list(gathered.values()), rtol=1e-6)


# ----------------------------------------------------------------------------- shard invariance


def _decay_solve_gradient(controller):
  """Gradient of a fixed linear read-out of a ``decay`` solve (12 positions, as the smoke
  preset trains) at parameters θ and θ + 1e-7·ε, with the given step-size controller."""
  d, n = 16, 12
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
  dyn = {**floater.init_dynamics(k1, d), "b1": 1e-3 * jax.random.normal(k3, (d,))}  # as after a step
  theta = {"dyn": dyn, "p0": floater.init_p0(k2, 3, 1, d)}
  readout = jax.random.normal(k4, (n, 3, 1, d))
  ts = np.arange(n, dtype=np.float32) * np.float32(DT)
  field = floater.flow_field(floater.vector_field, "decay")

  def loss(theta):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, a: field(a, t, y)), diffrax.Tsit5(),
        t0=0.0, t1=float(ts[-1]), dt0=DT, y0=theta["p0"], args=theta["dyn"],
        saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller, max_steps=64)
    return jnp.sum(sol.ys * readout)

  grad = jax.jit(jax.grad(loss))
  eps = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.PRNGKey(100), x.shape), theta)
  return grad(theta), grad(jax.tree_util.tree_map(lambda a, e: a + 1e-7 * e, theta, eps))


def test_bounded_flows_step_size_does_not_follow_rounding():
  """After the first step (dt0 = Δt, far below what rtol 1e-3 allows), Tsit5's scaled error
  estimate for ``decay`` is float32 rounding (~1e-5); diffrax's controller sizes the next
  step from it, so a 1e-7 change of the parameters moved the time grid and changed the
  gradient by tens of percent (ReLU kinks under the moved stages): the cause of sharded
  seeds parting from single runs. The bounded flows' controller reads such estimates as 0."""
  plain = diffrax.PIDController(rtol=1e-3, atol=1e-6)  # what "free" keeps
  ours = floater.step_size_controller(1e-3, 1e-6, "decay")
  assert floater.step_size_controller(1e-3, 1e-6, "free").norm is plain.norm
  rel = lambda g: max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                      for a, b in zip(*map(jax.tree_util.tree_leaves, g[::-1])))
  assert rel(_decay_solve_gradient(plain)) > 0.1  # the defect, as diffrax's controller has it
  assert rel(_decay_solve_gradient(ours)) < 1e-3


# ----------------------------------------------------------------------------- randomized positions


def _randomized(preset="default", **overrides):
  return train.setup(helpers.config("floater", preset, **{"positions.kind": "randomized",
                                                          **overrides}))


def test_auto_flow_is_free_in_range_and_decay_where_training_positions_reach_far(capsys,
                                                                               monkeypatch):
  """Randomized positions train on positions up to positions.max_position (t = 20.47 at 2048),
  where the free flow grew the state ~5e6-fold before any step and training diverged; "auto"
  (the default) solves decay there, says so once, and keeps the paper's flow everywhere else."""
  assert floater.resolve_flow("auto", 33, 0.01) == "free"      # default preset, contiguous
  assert floater.resolve_flow("auto", 256, 0.01) == "free"     # t = 2.55: the official range
  assert floater.resolve_flow("auto", 257, 0.01) == "decay"
  assert floater.free_dt(2048) == 0.00124 and floater.free_dt(33) == 0.0796
  assert floater.resolve_flow("auto", 2048, floater.free_dt(2048)) == "free"  # time rescaled
  assert floater.resolve_flow("auto", 0, 0.01) == "free"       # unknown: the paper's
  for flow in floater.FLOWS:
    assert floater.resolve_flow(flow, 2048, 0.01) == flow      # an explicit choice stands
  contiguous = train.setup(helpers.config("floater", "default"))
  assert contiguous.model(64).encoding.resolved_flow == "free"
  assert "note:" not in capsys.readouterr().out
  s = _randomized()
  enc = s.model(s.train_bound()).encoding
  assert enc.flow == "auto" and enc.resolved_flow == "decay"
  assert enc.solver_kwargs()["flow"] == "decay"
  evaluation = s.model(max(s.eval_bound(p) for _, p in s.eval_buckets)).encoding
  assert evaluation.solver_kwargs()["flow"] == "decay"  # training and evaluation agree
  assert floater.Encoding.resolved(s.config.encoding, s.train_positions()) == {"flow": "decay"}
  assert floater.Encoding.resolved(contiguous.config.encoding, contiguous.train_positions()) == {
      "flow": "free"}
  printed = capsys.readouterr().out
  assert printed.count("note: FLOATER: encoding.flow=auto -> decay") == 1, printed
  assert "t = 20.47" in printed and "--config.encoding.flow=free" in printed
  _randomized()  # once per process
  assert "note:" not in capsys.readouterr().out
  explicit = _randomized(**{"encoding.flow": "free"})
  assert explicit.model(8).encoding.solver_kwargs()["flow"] == "free"
  assert floater.Encoding.resolved(explicit.config.encoding, 2048) == {}


def test_a_smoke_step_with_randomized_positions_solves_the_bounded_flow():
  """The training step of the auto flow with randomized positions up to 2048 solves decay:
  its state stays within the bound, where the free flow's grows past 10^5."""
  s = _randomized("smoke")
  keys = train.root_keys(0)
  state = train.init_state(s, keys["init"])
  _, metrics = jax.jit(train.make_train_step(s))(state, keys["train"])
  p0 = np.asarray(state["params"]["encoding"]["ode_p0"])
  bound = np.sqrt(np.sum(np.maximum(np.abs(p0), 1.0) ** 2, -1)).max()  # decay: |p_i| <= max(|p_i(0)|, 1)
  assert int(metrics["ode_status"]) == floater.OK
  assert float(metrics["ode_norm"]) <= bound * (1 + 1e-5)
  assert np.isfinite(float(metrics["grad_norm"]))
  enc = state["params"]["encoding"]
  free = floater.solve({k: enc[f"ode_{k}"] for k in ("w1", "b1", "w2", "b2")}, enc["ode_p0"],
                       s.train_bound(), max_steps=16384)
  assert np.linalg.norm(np.asarray(free), axis=-1).max() > 1e3 * bound


def _diverged(norm, loss_nan=True, status=floater.OK):
  return {"loss": np.array([0.7, np.nan if loss_nan else 0.6]), "grad_norm": np.array([2.3e5, 1.0]),
          "ode_status": np.array([floater.OK, status]), "ode_norm": np.array([norm, np.nan])}


def test_a_divergence_names_the_flows_growth_and_the_flow_that_bounds_it():
  s = _randomized(**{"encoding.flow": "free"})
  cfg, n = s.config.encoding, s.train_bound()
  assert n == s.config.positions.max_position == 2048
  msg = floater.Encoding.explain_failure(_diverged(4.8e6), cfg, n)
  assert msg.startswith("likely cause: the FLOATER ODE state grew to norm 4.8e+06 ")
  for part in ("positions 0..2047", "t <= 20.47", "config.positions.max_position",
               "free flow", "--config.encoding.flow=decay", "tanh, sphere",
               "--config.encoding.dt=0.00124"):
    assert part in msg, (part, msg)
  # Through the training loop's check: the step and the kept checkpoint around it.
  with pytest.raises(train.TrainingDiverged, match=r"^training failed at step 157: likely cause: "
                     r"the FLOATER ODE state grew .*flow=decay.*; kept$"):
    train.check_diverged(s, _diverged(4.8e6), 157, "kept")
  # tanh drifts linearly: it is named with the flows that bound the state.
  tanh = helpers.config("floater", **{"encoding.flow": "tanh"}).encoding
  assert "bounds the speed, not the state" in floater.Encoding.explain_failure(
      _diverged(2e3), tanh, n)
  # No growth, or nothing diverged (evaluation asks too, with finite numbers): no FLOATER cause.
  assert floater.Encoding.explain_failure(_diverged(40.0), cfg, n) is None
  assert floater.Encoding.explain_failure(_diverged(4.8e6, loss_nan=False), cfg, n) is None
  assert floater.Encoding.explain_failure(
      {"ode_status": np.array([0]), "ode_steps": np.array([9.0]), "ode_norm": np.array([5e6])},
      cfg, n) is None
  # A failed solve keeps its own message and adds the growth seen before it.
  failed = floater.Encoding.explain_failure(_diverged(4.8e6, status=floater.NONFINITE), cfg, n)
  assert failed.startswith("FLOATER ODE solver: the solved positions are NaN/Inf")
  assert "; before it, the FLOATER ODE state grew to norm 4.8e+06" in failed
