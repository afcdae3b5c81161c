"""ALiBi: the official slopes; the causal, asymmetric (Ruoss et al. 2023, the encoder's default) and
symmetric biases from explicit positions; end to end."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import alibi
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
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


def _reference_encoder_alibi(length, num_heads):
  """Ruoss et al.'s non-causal ALiBi (google-deepmind/randomized_positional_encodings,
  models/positional_encodings.py, compute_alibi_encodings_biases), restated over index
  positions 0..L−1: minus the distance in both triangles, +0.5 in the strictly lower one
  (keys before the query), then times the head slopes."""
  strictly_lower = np.tri(length, length, k=-1)
  rows, cols = np.indices((length, length))
  table = -np.abs(rows - cols) + 0.5 * strictly_lower
  return table[None] * np.asarray(_official_get_slopes(num_heads))[:, None, None]


def test_bias_values_and_shapes():
  pos = jnp.array([[0, 1, 2, 5]])
  causal = alibi.bias(pos, pos, 2, form="causal")
  assert causal.shape == (1, 2, 4, 4) and causal.dtype == jnp.float32
  m = alibi.slopes(2)  # [2^-4, 2^-8]
  dist = np.array([0, 1, 2, 5])[:, None] - np.array([0, 1, 2, 5])[None]
  for h in range(2):
    np.testing.assert_allclose(causal[0, h], -m[h] * dist, rtol=1e-6)
    np.testing.assert_allclose(alibi.bias(pos, pos, 2, form="symmetric")[0, h], -m[h] * np.abs(dist),
                               rtol=1e-6)
    np.testing.assert_allclose(alibi.bias(pos, pos, 2, form="asymmetric")[0, h],
                               -m[h] * (np.abs(dist) - 0.5 * (dist > 0)), rtol=1e-6)
  # Per-example positions give a per-example bias; a shift of all positions changes nothing.
  per_example = jnp.stack([pos[0], pos[0] + 100])
  for form in alibi.FORMS:
    out = alibi.bias(per_example, per_example, 2, form=form)
    assert out.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(out[1], out[0])
  with pytest.raises(ValueError, match="unknown ALiBi form"):
    alibi.bias(pos, pos, 2, form="left")


def test_asymmetric_hand_values():
  # One head (m = 2^-8), query at position 10: keys 1 and 3 before it give −m·(1 − 1/2) and
  # −m·(3 − 1/2); keys 1 and 3 after it give −m·1 and −m·3; the query itself 0.
  m = 2.0 ** -8
  q_pos, k_pos = jnp.array([[10]]), jnp.array([[7, 9, 10, 11, 13]])
  got = np.asarray(alibi.bias(q_pos, k_pos, 1, form="asymmetric"))[0, 0, 0]
  np.testing.assert_allclose(got, [-2.5 * m, -0.5 * m, 0.0, -m, -3 * m], rtol=1e-6)
  # 8 heads, keys two before / two after: the first head (m = 1/2) gives −0.75 and −1.
  got = np.asarray(alibi.bias(q_pos, jnp.array([[8, 12]]), 8, form="asymmetric"))[0, 0, 0]
  np.testing.assert_allclose(got, [-0.75, -1.0])


@pytest.mark.parametrize("heads", [1, 3, 4, 8])
@pytest.mark.parametrize("length", [1, 2, 7])
def test_asymmetric_matches_reference(heads, length):
  pos = jnp.arange(length)[None]
  got = np.asarray(alibi.bias(pos, pos, heads, form="asymmetric"))[0]
  np.testing.assert_allclose(got, _reference_encoder_alibi(length, heads), rtol=1e-6, atol=1e-7)


def test_encoder_tells_left_from_right_only_when_asymmetric():
  # For every query, the key d before and the key d after it: different biases in the
  # asymmetric form (by exactly m/2), equal in the symmetric one.
  pos = jnp.arange(9)[None] * 3  # strided positions, as randomized positions may be
  m = alibi.slopes(4)[:, None]
  asym = np.asarray(alibi.bias(pos, pos, 4, form="asymmetric"))[0]
  sym = np.asarray(alibi.bias(pos, pos, 4, form="symmetric"))[0]
  for d in (1, 2, 4):
    i = np.arange(d, 9 - d)
    np.testing.assert_allclose(asym[:, i, i - d] - asym[:, i, i + d], np.broadcast_to(m / 2, (4, len(i))),
                               rtol=1e-6)
    np.testing.assert_array_equal(sym[:, i, i - d], sym[:, i, i + d])


def _term(causal, **options):
  dims = Dims(d_model=32, num_heads=4, num_layers=3, causal=causal, max_position=32)
  enc = alibi.Encoding(dims=dims, **options)
  enc.check(32)
  q = jnp.zeros((2, 6, 4, 8))
  pos = jnp.arange(6)[None] * 3
  return enc, enc.logits(q, q, pos, pos, 0), enc.logits(q, q, pos, pos, 2), pos


def test_hook_forms_by_mode_and_direction():
  # Encoder: asymmetric by default, symmetric on request; the same term in every layer,
  # broadcast over the batch (not materialised).
  for options, form in (({}, "asymmetric"), ({"direction": "asymmetric"}, "asymmetric"),
                        ({"direction": "symmetric"}, "symmetric")):
    enc, term, term_layer2, pos = _term(False, **options)
    assert enc.form() == form and term.shape == (1, 4, 6, 6)
    np.testing.assert_allclose(term, alibi.bias(pos, pos, 4, form=form))
    np.testing.assert_allclose(term_layer2, term)
  # Decoder: −m·(i − j), as before, whatever the direction (it only picks the encoder's form).
  for options in ({}, {"direction": "symmetric"}):
    enc, term, _, pos = _term(True, **options)
    dist = np.asarray(pos[0])[:, None] - np.asarray(pos[0])[None]
    np.testing.assert_allclose(term[0], -alibi.slopes(4)[:, None, None] * dist, rtol=1e-6)
  assert not hasattr(alibi.Encoding, "embed")  # no input encoding


def test_direction_config():
  from posenc import encodings
  assert encodings.default_config("alibi").direction == "asymmetric"
  from configs import alibi as alibi_config
  for preset in ("smoke", "default", "paper"):
    assert alibi_config.get_config(preset).encoding.direction == "asymmetric"
  with pytest.raises(ConfigError, match="config.encoding.direction"):
    _term(False, direction="left")


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "alibi", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")


def test_smoke_symmetric_encoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "alibi", **{"encoding.direction": "symmetric"})
  helpers.check_smoke_results(results)
