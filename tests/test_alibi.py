"""ALiBi: the official slopes, causal vs symmetric biases from explicit positions, end to end."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import alibi
from posenc.encodings.base import Dims
from tests import helpers


def _official_get_slopes(n):
  """ofirpress/attention_with_linear_biases get_slopes (fairseq/models/transformer.py), restated."""
  def power_of_2(n):
    start = 2 ** (-2 ** -(math.log2(n) - 3))
    return [start * start ** i for i in range(n)]
  if math.log2(n).is_integer():
    return power_of_2(n)
  closest = 2 ** math.floor(math.log2(n))
  return power_of_2(closest) + _official_get_slopes(2 * closest)[0::2][:n - closest]


@pytest.mark.parametrize("heads", range(1, 17))
def test_slopes_match_official_rule(heads):
  np.testing.assert_allclose(alibi.slopes(heads), _official_get_slopes(heads), rtol=1e-6)


def test_slopes_by_hand():
  np.testing.assert_allclose(alibi.slopes(8), [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256])
  # 6 heads: the 4-head slopes 2^-2 .. 2^-8, then 2^-1 and 2^-3 (every other slope of 8 heads).
  np.testing.assert_allclose(alibi.slopes(6), [0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125])
  # 12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from 16 heads.
  np.testing.assert_allclose(alibi.slopes(12), [2.0 ** -h for h in range(1, 9)]
                             + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5], rtol=1e-6)


def test_bias_values_and_shapes():
  pos = jnp.array([[0, 1, 2, 5]])
  causal = alibi.bias(pos, pos, 2, symmetric=False)
  assert causal.shape == (1, 2, 4, 4) and causal.dtype == jnp.float32
  m = alibi.slopes(2)  # [2^-4, 2^-8]
  dist = np.array([0, 1, 2, 5])[:, None] - np.array([0, 1, 2, 5])[None]
  for h in range(2):
    np.testing.assert_allclose(causal[0, h], -m[h] * dist, rtol=1e-6)
    np.testing.assert_allclose(alibi.bias(pos, pos, 2, symmetric=True)[0, h], -m[h] * np.abs(dist), rtol=1e-6)
  # Per-example positions give a per-example bias; a shift of all positions changes nothing.
  per_example = jnp.stack([pos[0], pos[0] + 100])
  out = alibi.bias(per_example, per_example, 2, symmetric=True)
  assert out.shape == (2, 2, 4, 4)
  np.testing.assert_allclose(out[1], out[0])


def test_hook_is_symmetric_in_an_encoder_and_linear_in_a_decoder():
  pos = jnp.arange(6)[None] * 3  # e.g. randomized / strided positions
  q = jnp.zeros((2, 6, 4, 8))
  for causal in (False, True):
    dims = Dims(d_model=32, num_heads=4, num_layers=3, causal=causal, max_position=16)
    enc = alibi.Encoding(dims=dims)
    term = enc.logits(q, q, pos, pos, 0)
    assert term.shape == (1, 4, 6, 6)  # broadcast over the batch, not materialised
    np.testing.assert_allclose(term, alibi.bias(pos, pos, 4, symmetric=not causal))
    np.testing.assert_allclose(enc.logits(q, q, pos, pos, 2), term)  # same in every layer
  assert not hasattr(alibi.Encoding, "embed")  # no input encoding


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "alibi", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
