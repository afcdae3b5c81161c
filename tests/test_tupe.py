"""TUPE: the untied position term against its formula, computed once and shared by
all layers (batch-free for shared positions), TUPE-R's T5 bias, the table bound,
encoder only."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import t5, tupe
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers

D, H, DH = 8, 2, 4


def _setup(layers=2, relative=False, max_len=32):
  dims = Dims(d_model=D, num_heads=H, num_layers=layers, causal=False, max_position=max_len)
  enc = tupe.Encoding(dims=dims, max_len=max_len, relative=relative)
  q = jax.random.normal(jax.random.PRNGKey(1), (3, 5, H, DH))
  pos = jnp.array([[0, 1, 4, 9, 31]])
  params = enc.init(jax.random.PRNGKey(0), q, q, pos, pos, 0, method="logits")
  # Non-trivial LayerNorm affine and projection biases, so that their use is tested too.
  params = jax.tree_util.tree_map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), params)
  return enc, params, q, pos


def _explicit(p, pos):
  """(p_i U^Q + b)(p_j U^K + b)ᵀ / sqrt(2·d_h) with p = LayerNorm(P)[pos], per head."""
  table = np.asarray(p["pos"], np.float64)
  mean = table.mean(-1, keepdims=True)
  normed = (table - mean) / np.sqrt(((table - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
  normed = normed * p["pos_norm"]["scale"] + p["pos_norm"]["bias"]
  rows = normed[np.asarray(pos[0])]
  pq = np.einsum("lc,chd->lhd", rows, p["pos_q_kernel"]) + p["pos_q_bias"]
  pk = np.einsum("lc,chd->lhd", rows, p["pos_k_kernel"]) + p["pos_k_bias"]
  return np.einsum("qhd,khd->hqk", pq, pk)[None] / math.sqrt(2 * DH)


def test_position_term_formula_and_broadcast():
  enc, params, q, pos = _setup()
  term = enc.apply(params, q, q, pos, pos, 0, method="logits")
  assert term.shape == (1, H, 5, 5)  # positions [1, L]: one term for the whole batch
  p = jax.tree_util.tree_map(np.asarray, params["params"])
  np.testing.assert_allclose(term, _explicit(p, pos), rtol=1e-4, atol=1e-5)
  # Untied: the term ignores the content (q, k) entirely.
  other = enc.apply(params, 5 * q, -q, pos, pos, 0, method="logits")
  np.testing.assert_array_equal(term, other)
  assert tupe.Encoding.CONTENT_SCALE == pytest.approx(1 / math.sqrt(2))
  # Per-example positions give a per-example term.
  pos_b = jnp.concatenate([pos, pos // 2, jnp.arange(5)[None]])
  assert enc.apply(params, q, q, pos_b, pos_b, 0, method="logits").shape == (3, H, 5, 5)


@pytest.mark.parametrize("relative", [False, True])
def test_shared_by_layers(relative):
  shapes = []
  for layers in (1, 4):
    enc, params, q, pos = _setup(layers=layers, relative=relative)
    shapes.append(jax.tree_util.tree_map(jnp.shape, params["params"]))
    terms = [enc.apply(params, q, q, pos, pos, l, method="logits") for l in range(layers)]
    assert all(np.array_equal(terms[0], t) for t in terms)
  assert shapes[0] == shapes[1]  # nothing per layer
  names = {"pos", "pos_norm", "pos_q_kernel", "pos_q_bias", "pos_k_kernel", "pos_k_bias"}
  assert set(shapes[0]) == names | ({"relative_attention_bias"} if relative else set())
  assert shapes[0]["pos"] == (32, D) and shapes[0]["pos_q_kernel"] == (D, H, DH)


def test_tupe_r_adds_t5_bias():
  enc, params, q, pos = _setup(relative=True)
  with_rel = enc.apply(params, q, q, pos, pos, 0, method="logits")
  p = jax.tree_util.tree_map(np.asarray, params["params"])
  assert p["relative_attention_bias"].shape == (32, H)
  buckets = np.asarray(t5.relative_position_bucket(pos[0][None, :] - pos[0][:, None]))  # j − i
  rel = np.transpose(p["relative_attention_bias"][buckets], (2, 0, 1))[None]
  np.testing.assert_allclose(with_rel, _explicit(p, pos) + rel, rtol=1e-4, atol=1e-5)


def test_check_refuses_positions_past_the_table():
  enc, *_ = _setup(max_len=32)
  enc.check(32)  # positions 0..31 fit
  with pytest.raises(ConfigError, match="config.encoding.max_len") as err:
    enc.check(33)
  assert "at least 33" in str(err.value)


def test_smoke_encoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "tupe")
  helpers.check_smoke_results(results)
  assert results["mode"] == "encoder"


def test_decoder_refused(tmp_path):
  with pytest.raises(ConfigError, match="config.model.causal") as err:
    helpers.run_smoke(tmp_path, "tupe", **{"model.causal": True})
  assert err.value.field == "config.model.causal"
