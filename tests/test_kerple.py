"""KERPLE: kernel values, official initialisation and bounds, layer sharing, end to end."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import kerple
from posenc.encodings.base import Dims
from tests import helpers


def _dims(causal=False, heads=4, layers=3):
  return Dims(d_model=8 * heads, num_heads=heads, num_layers=layers, causal=causal, max_position=16)


def _init(variant="log", positivity="clamp", heads=4, layers=3, causal=False, seed=0):
  enc = kerple.Encoding(dims=_dims(causal, heads, layers), variant=variant, positivity=positivity)
  pos = jnp.arange(5)[None]
  q = jnp.zeros((1, 5, heads, 8))
  variables = enc.init(jax.random.PRNGKey(seed), q, q, pos, pos, 0, method=enc.logits)
  return enc, variables


def _assert_direction_blind(term_HxLxL):
  """For every query row, the key d before it and the key d after it get the same bias."""
  term = np.asarray(term_HxLxL)
  length = term.shape[-1]
  for d in range(1, length // 2 + 1):
    i = np.arange(d, length - d)
    np.testing.assert_array_equal(term[:, i, i - d], term[:, i, i + d])


def test_log_bias_values():
  r1, r2 = jnp.array([0.5, 2.0]), jnp.array([0.1, 1.0])
  d = jnp.array([[0.0, 1.0, 2.0, 10.0]])
  got = kerple.log_bias(d, r1, r2)
  assert got.shape == (2, 1, 4)
  for h in range(2):
    want = [-float(r1[h]) * math.log(1 + float(r2[h]) * x) for x in (0, 1, 2, 10)]
    np.testing.assert_allclose(got[h, 0], want, rtol=1e-6)


def test_power_bias_values_and_gradient_at_zero():
  r1, r2 = jnp.array([0.5, 1.0]), jnp.array([0.5, 2.0])
  d = jnp.array([[0.0, 1.0, 4.0, 9.0]])
  got = kerple.power_bias(d, r1, r2)
  np.testing.assert_allclose(got[0, 0], [0.0, -0.5, -1.0, -1.5], rtol=1e-6)
  np.testing.assert_allclose(got[1, 0], [0.0, -1.0, -16.0, -81.0], rtol=1e-6)
  grad = jax.grad(lambda p: kerple.power_bias(d, r1, p).sum())(r2)
  assert np.all(np.isfinite(grad))  # 0^p has a finite derivative in p here


@pytest.mark.parametrize("variant,hi1,hi2", [("log", 2.0, 1.0), ("power", 1.0, 2.0)])
def test_official_initialisation(variant, hi1, hi2):
  # chijames/KERPLE: the exponent-like parameter ~ U(0, 2), the other ~ U(0, 1), clamped >= 0.01.
  enc, variables = _init(variant, heads=64)
  p = variables["params"]
  assert set(p) == {"r1", "r2"} and p["r1"].shape == (64,) and p["r2"].shape == (64,)
  for name, hi in (("r1", hi1), ("r2", hi2)):
    v = np.asarray(p[name])
    assert v.min() >= kerple.EPS and v.max() <= hi
    assert v.max() > 0.75 * hi and v.min() < 0.25 * hi  # spread over the whole interval
    assert len(np.unique(v)) == 64  # drawn per head


def test_one_parameter_set_shared_by_all_layers():
  enc, variables = _init(layers=3)
  pos = jnp.arange(5)[None]
  q = jnp.zeros((1, 5, 4, 8))
  per_layer = [enc.apply(variables, q, q, pos, pos, l, method=enc.logits) for l in range(3)]
  for term in per_layer[1:]:
    np.testing.assert_array_equal(term, per_layer[0])
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables)) == 2 * 4


def test_distances_by_mode():
  pos = jnp.array([[0, 2, 3, 7]])
  q = jnp.zeros((1, 4, 4, 8))
  for causal in (False, True):
    enc, variables = _init(causal=causal)
    term = enc.apply(variables, q, q, pos, pos, 0, method=enc.logits)
    assert term.shape == (1, 4, 4, 4)
    r1, r2 = (np.asarray(variables["params"][n]) for n in ("r1", "r2"))
    dist = np.array([0, 2, 3, 7])[:, None] - np.array([0, 2, 3, 7])[None]
    dist = np.maximum(dist, 0) if causal else np.abs(dist)
    want = -r1[:, None, None] * np.log1p(r2[:, None, None] * dist)
    np.testing.assert_allclose(term[0], want, rtol=1e-5)


@pytest.mark.parametrize("variant", kerple.VARIANTS)
def test_direction_blind_in_an_encoder(variant):
  # Documented in the module docstring (no direction-aware form in the paper or its code).
  enc, variables = _init(variant=variant)
  pos = jnp.arange(9)[None] * 5 + 3
  q = jnp.zeros((1, 9, 4, 8))
  term = enc.apply(variables, q, q, pos, pos, 0, method=enc.logits)[0]
  _assert_direction_blind(term)
  assert np.ptp(np.asarray(term)[:, 4, :]) > 0  # it does vary with the distance
  assert "direction-blind" in kerple.__doc__.lower()


def test_clamp_bounds_with_straight_through_gradient():
  enc, variables = _init("power")
  params = {"r1": jnp.array([-1.0, 0.5, 3.0, 1.0]), "r2": jnp.array([-1.0, 0.5, 5.0, 2.0])}
  r1, r2 = enc.apply({"params": params}, method=enc.parameters)
  np.testing.assert_allclose(r1, [0.01, 0.5, 3.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(r2, [0.01, 0.5, 2.0, 2.0], rtol=1e-6)  # power's exponent is also <= 2
  grad = jax.grad(lambda p: enc.apply({"params": p}, method=enc.parameters)[1].sum())(params)
  np.testing.assert_allclose(grad["r2"], np.ones(4))


def test_softplus_keeps_parameters_positive():
  enc, variables = _init("log", positivity="softplus")
  r1, r2 = enc.apply(variables, method=enc.parameters)
  raw = variables["params"]
  assert np.all(np.asarray(r1) > 0) and np.all(np.asarray(r1) <= 2.0 + 1e-5)
  np.testing.assert_allclose(r1, jax.nn.softplus(raw["r1"]), rtol=1e-6)
  params = {"r1": jnp.full((4,), -30.0), "r2": jnp.full((4,), -30.0)}
  assert np.all(np.asarray(enc.apply({"params": params}, method=enc.parameters)[0]) > 0)


@pytest.mark.parametrize("causal,variant", [(False, "log"), (True, "power")])
def test_smoke(tmp_path, causal, variant):
  results = helpers.run_smoke(tmp_path, "kerple", **{"model.causal": causal, "encoding.variant": variant})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
