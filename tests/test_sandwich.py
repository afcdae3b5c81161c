"""Sandwich: values computed independently, shape of the bias, end to end."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import sandwich
from posenc.encodings.base import Dims
from tests import helpers


def _reference(distance, dim, heads):
  """(Σ_{m=1}^{d'/2} cos(δ / 10000^{2m/d'}) − d'/2) / (h·8/H), h = 1..H, in plain Python."""
  total = sum(math.cos(distance / 10000 ** (2 * m / dim)) for m in range(1, dim // 2 + 1))
  return [(total - dim / 2) / (h * 8 / heads) for h in range(1, heads + 1)]


def test_values_at_a_few_distances():
  distances = [0, 1, -1, 2, 5, 37, 100, 1000]
  got = sandwich.bias(jnp.array([distances], jnp.float32), dim=8, num_heads=4)  # [4, 1, len]
  assert got.shape == (4, 1, len(distances))
  for n, d in enumerate(distances):
    np.testing.assert_allclose(got[:, 0, n], _reference(d, 8, 4), rtol=1e-5, atol=1e-5)
  # Hand check, d' = 2, one head: cos(δ/10000) − 1 over compression 8.
  one = sandwich.bias(jnp.array([[3.0]]), dim=2, num_heads=1)
  assert float(one[0, 0, 0]) == pytest.approx((math.cos(3 / 10000) - 1) / 8, abs=1e-9)


def test_shape_of_the_bias():
  d = jnp.arange(-50, 51, dtype=jnp.float32)[None]
  b = np.asarray(sandwich.bias(d, dim=128, num_heads=8))[:, 0]  # [H, 101]
  np.testing.assert_allclose(b[:, 50], 0.0, atol=1e-4)  # 0 at i = j
  assert np.all(b <= 1e-4)
  np.testing.assert_allclose(b[:, ::-1], b, atol=1e-4)  # even in i − j
  for h in range(8):
    np.testing.assert_allclose(b[h], b[0] / (h + 1), rtol=1e-5, atol=1e-6)  # head compression h·8/H
  assert np.all(np.diff(b[0, 50:60]) < 0)  # decays near the diagonal


def test_hook_broadcasts_over_the_batch_and_layers():
  pos = jnp.arange(6)[None] + 40
  q = jnp.zeros((3, 6, 2, 8))
  for causal in (False, True):
    enc = sandwich.Encoding(dims=Dims(d_model=16, num_heads=2, num_layers=2, causal=causal, max_position=64),
                            dim=16)
    term = enc.logits(q, q, pos, pos, 1)
    assert term.shape == (1, 2, 6, 6)
    want = sandwich.bias(np.arange(6)[:, None] - np.arange(6)[None], 16, 2)
    np.testing.assert_allclose(term[0], want, atol=1e-5)


def test_direction_blind_in_an_encoder():
  # Documented in the module docstring (even in i − j; no direction-aware form in the paper).
  enc = sandwich.Encoding(dims=Dims(d_model=16, num_heads=2, num_layers=1, causal=False, max_position=64),
                          dim=16)
  pos = jnp.arange(9)[None] * 7 + 2
  q = jnp.zeros((1, 9, 2, 8))
  term = np.asarray(enc.logits(q, q, pos, pos, 0))[0]
  length = term.shape[-1]
  for d in range(1, length // 2 + 1):
    i = np.arange(d, length - d)
    np.testing.assert_array_equal(term[:, i, i - d], term[:, i, i + d])
  assert np.ptp(term[:, 4, :]) > 0
  assert "direction-blind" in sandwich.__doc__.lower()


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "sandwich", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
