"""FIRE: the normalised distance, per-layer functions, end to end."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import fire
from posenc.encodings.base import Dims
from tests import helpers


def _init(shared=False, layers=3, causal=True, heads=2):
  dims = Dims(d_model=8 * heads, num_heads=heads, num_layers=layers, causal=causal, max_position=16)
  enc = fire.Encoding(dims=dims, shared=shared)
  pos = jnp.arange(6)[None]
  q = jnp.zeros((1, 6, heads, 8))
  # Touch every layer, as the model does, so that every layer's function is created.
  every_layer = lambda m, *a: [m.logits(*a, layer) for layer in range(layers)]
  variables = enc.init(jax.random.PRNGKey(0), q, q, pos, pos, method=every_layer)
  return enc, variables


def test_normalized_distance_values():
  psi = lambda x: math.log(0.1 * abs(x) + 1)
  got = fire.normalized_distance(jnp.array([10, 1000]), jnp.array([3, 0, 1000]))  # [2, 3]
  # Below the threshold the normaliser is ψ(512); beyond it ψ(i).
  assert float(got[0, 0]) == pytest.approx(psi(7) / (psi(512) + 1e-6), rel=1e-6)
  assert float(got[0, 2]) == pytest.approx(psi(990) / (psi(512) + 1e-6), rel=1e-6)
  assert float(got[1, 1]) == pytest.approx(psi(1000) / (psi(1000) + 1e-6), rel=1e-6)
  assert float(got[1, 2]) == 0.0
  got = fire.normalized_distance(jnp.array([4]), jnp.array([0]), c=1.0, length=2.0)
  assert float(got[0, 0]) == pytest.approx(1 / (1 + 1e-6 / math.log(5)), rel=1e-6)  # j = 0, i > L̂: ~1


def test_normalized_distance_in_unit_interval_for_causal_pairs():
  pos = jnp.asarray(np.sort(np.random.default_rng(1).choice(20000, 64, replace=False)))
  got = np.asarray(fire.normalized_distance(pos, pos))
  causal = np.tril(np.ones((64, 64), bool))
  assert np.all(got[causal] >= 0) and np.all(got[causal] < 1)
  np.testing.assert_allclose(np.diag(got), 0.0)
  # Batched positions [B, L] -> [B, L, L]; below the threshold the normaliser is constant,
  # so shifting every position changes nothing.
  two = fire.normalized_distance(jnp.stack([jnp.arange(5), jnp.arange(5) + 100]),
                                 jnp.stack([jnp.arange(5), jnp.arange(5) + 100]))
  np.testing.assert_allclose(two[0], two[1], rtol=1e-6)


def test_per_layer_functions_and_initial_values():
  enc, variables = _init(shared=False, layers=3)
  params = variables["params"]
  assert sorted(params) == ["fire_layer0", "fire_layer1", "fire_layer2"]
  for p in params.values():
    assert float(p["c"]) == pytest.approx(0.1) and float(p["length_multiplier"]) == 1.0
    assert p["hidden"]["kernel"].shape == (1, 32) and p["out"]["kernel"].shape == (32, 2)
  pos = jnp.arange(6)[None]
  q = jnp.zeros((1, 6, 2, 8))
  t0 = enc.apply(variables, q, q, pos, pos, 0, method=enc.logits)
  t1 = enc.apply(variables, q, q, pos, pos, 1, method=enc.logits)
  assert t0.shape == (1, 2, 6, 6)
  assert not np.allclose(t0, t1)  # each layer has its own function


def test_shared_variant_uses_one_function():
  enc, variables = _init(shared=True, layers=3)
  assert list(variables["params"]) == ["fire"]
  pos = jnp.arange(6)[None]
  q = jnp.zeros((1, 6, 2, 8))
  np.testing.assert_array_equal(enc.apply(variables, q, q, pos, pos, 0, method=enc.logits),
                                enc.apply(variables, q, q, pos, pos, 2, method=enc.logits))


def test_bias_is_the_mlp_of_the_normalised_distance():
  enc, variables = _init(layers=1)
  p = variables["params"]["fire_layer0"]
  pos = jnp.array([[0, 3, 4, 9, 20, 21]])
  q = jnp.zeros((1, 6, 2, 8))
  term = enc.apply(variables, q, q, pos, pos, 0, method=enc.logits)
  x = np.asarray(fire.normalized_distance(pos, pos))[0][..., None]
  h = np.maximum(x @ np.asarray(p["hidden"]["kernel"]) + np.asarray(p["hidden"]["bias"]), 0)
  want = h @ np.asarray(p["out"]["kernel"]) + np.asarray(p["out"]["bias"])  # [L, L, H]
  np.testing.assert_allclose(term[0], np.moveaxis(want, -1, 0), rtol=1e-5, atol=1e-6)
  # Gradients reach c and the threshold multiplier.
  grads = jax.jit(jax.grad(lambda v: enc.apply(v, q, q, pos, pos, 0, method=enc.logits).sum()))(variables)
  assert float(jnp.abs(grads["params"]["fire_layer0"]["c"])) > 0


def test_direction_blind_in_an_encoder():
  # Documented in the module docstring: the encoder's input is ψ(|i − j|) / ψ(max(L̂, i)), so
  # each query row mirrors; with a small threshold the normaliser varies with the query, and
  # the term is then not even in i − j, yet every row still cannot tell left from right.
  dims = Dims(d_model=16, num_heads=2, num_layers=1, causal=False, max_position=64)
  enc = fire.Encoding(dims=dims, init_length=4.0)
  pos = jnp.arange(9)[None] * 3
  q = jnp.zeros((1, 9, 2, 8))
  variables = enc.init(jax.random.PRNGKey(3), q, q, pos, pos, 0, method=enc.logits)
  term = np.asarray(enc.apply(variables, q, q, pos, pos, 0, method=enc.logits))[0]
  for d in range(1, 5):
    i = np.arange(d, 9 - d)
    np.testing.assert_array_equal(term[:, i, i - d], term[:, i, i + d])
  assert not np.allclose(term, np.swapaxes(term, 1, 2))  # the normaliser depends on i
  assert np.ptp(term[:, 4, :]) > 0
  assert "direction-blind" in fire.__doc__.lower()


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "fire", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
