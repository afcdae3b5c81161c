"""DeBERTa disentangled attention: log buckets against an independent restatement
of the official ``make_log_bucket_position`` and hand values; c2p + p2c against a
literal loop re-statement of the official gathers (p2c index convention); one
shared LayerNorm'd table, per-layer projections; encoder only."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import deberta
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _reference_log_bucket(r, bucket_size, max_position):
  """microsoft/DeBERTa ``DeBERTa/deberta/da_utils.py::make_log_bucket_position``, restated
  (float64 numpy as there): identity for |r| <= mid, else sign·(mid + ceil(log(|r|/mid) /
  log((max_position − 1)/mid)·(mid − 1)))."""
  r = np.asarray(r, np.int64)
  mid = bucket_size // 2
  out = r.copy()
  for idx, value in np.ndenumerate(r):
    a = abs(int(value))
    if a > mid:
      ceil_part = math.ceil(math.log(a / mid) / math.log((max_position - 1) / mid) * (mid - 1))
      out[idx] = int(np.sign(value)) * (mid + ceil_part)
  return out


@pytest.mark.parametrize("bucket_size,max_position", [(256, 512), (4, 8), (64, 256), (512, 4096)])
def test_log_bucket_matches_official_formula(bucket_size, max_position):
  # (4, 8) at r = 7 and (512, 4096) at r = 1643 are where a float32 log would be one off.
  r = np.concatenate([np.arange(-3000, 3001), [-(2 ** 31 - 1), -10 ** 6, 17852, 10 ** 6, 2 ** 31 - 1]])
  got = np.asarray(deberta.log_bucket(jnp.asarray(r, jnp.int32), bucket_size, max_position))
  np.testing.assert_array_equal(got, _reference_log_bucket(r, bucket_size, max_position))


def test_log_bucket_hand_values():
  # (256, 512): mid = 128, log((512 − 1)/128) = 1.38437.
  #   129: 128 + ceil(log(129/128)/1.38437·127 = 0.714) = 129
  #   200: 128 + ceil(log(1.5625)/1.38437·127 = 40.94) = 169
  #   511: 128 + ceil(127.0) = 255;  1000: 128 + ceil(188.6) = 317;  2047: 128 + ceil(254.4) = 383
  table = {0: 0, 5: 5, -5: -5, 127: 127, 128: 128, -128: -128, 129: 129, 200: 169, -200: -169,
           511: 255, -511: -255, 512: 256, 1000: 317, 2047: 383}
  got = deberta.log_bucket(jnp.array(list(table)))
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, list(table.values()))


def test_relative_index_query_minus_key_clamped():
  pos = jnp.array([[0, 1, 2, 40]])
  idx = deberta.relative_index(pos, pos, position_buckets=8, max_relative_positions=16)
  assert idx.shape == (1, 4, 4)
  # s = 8 rows a side; δ = bucket(i − j): key 3 (pos 40) is far after every query -> row 0;
  # query 3 vs key 0: bucket(40) = 4 + ceil(log(10)/log(15/4)·3 = 5.23) = 10 -> 18, clamped to 15.
  np.testing.assert_array_equal(idx[0], [[8, 7, 6, 0], [9, 8, 7, 0], [10, 9, 8, 0], [15, 15, 15, 8]])


def _layer_norm(x, eps=1e-7):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def _official_loop(q, k, pos_key, pos_query, bucket_size, max_relative_positions, p2c_sign=-1):
  """The official ``disentangled_attention_bias`` (square case, contiguous ids) as loops.

  c2p: gather (q @ pos_keyᵀ) at clamp(r_pos + s); p2c: gather (k @ pos_queryᵀ), which
  is key-major, at clamp(−r_pos + s), then transpose; r_pos[a, b] = bucket(a − b).
  ``p2c_sign=+1`` gathers at clamp(+r_pos + s) instead: the paper's notation δ(j, i)
  read literally (see microsoft/DeBERTa issue #47 on the p2c implementation).
  """
  b, length, h, _ = q.shape
  s = bucket_size
  r_pos = _reference_log_bucket(np.arange(length)[:, None] - np.arange(length)[None, :],
                                bucket_size, max_relative_positions)
  c2p_pos = np.clip(r_pos + s, 0, 2 * s - 1)
  p2c_pos = np.clip(p2c_sign * r_pos + s, 0, 2 * s - 1)
  out = np.zeros((b, h, length, length))
  for bi in range(b):
    for hi in range(h):
      c2p_att = q[bi, :, hi] @ pos_key[:, hi].T     # [Lq, 2s]
      p2c_att = k[bi, :, hi] @ pos_query[:, hi].T   # [Lk, 2s], rows are keys
      gathered = np.zeros((length, length))
      for a in range(length):
        for c in range(length):
          out[bi, hi, a, c] += c2p_att[a, c2p_pos[a, c]]
          gathered[a, c] = p2c_att[a, p2c_pos[a, c]]
      out[bi, hi] += gathered.T  # .transpose(-1, -2)
  return out


def _setup(layers=2, length=20, batch=2):
  dims = Dims(d_model=8, num_heads=2, num_layers=layers, causal=False, max_position=64)
  enc = deberta.Encoding(dims=dims, position_buckets=8, max_relative_positions=16)
  kq, kk, kp = jax.random.split(jax.random.PRNGKey(0), 3)
  q = jax.random.normal(kq, (batch, length, 2, 4))
  k = jax.random.normal(kk, (batch, length, 2, 4))
  pos = jnp.arange(length)[None]
  params = enc.init(kp, q, k, pos, pos, 0, method="logits")
  # Non-trivial LayerNorm affine and biases, so that their use is tested too.
  params = jax.tree_util.tree_map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), params)
  return enc, params, q, k, pos


def test_logits_equal_official_gathers():
  enc, params, q, k, pos = _setup(layers=2)
  p = jax.tree_util.tree_map(np.asarray, params["params"])
  rel = _layer_norm(p["rel_embeddings"]) * p["rel_norm"]["scale"] + p["rel_norm"]["bias"]
  layer = 1
  proj = lambda w: (np.einsum("nc,chd->nhd", rel, p[f"layer{layer}_pos_{w}_proj_kernel"])
                    + p[f"layer{layer}_pos_{w}_proj_bias"])
  pos_key, pos_query = proj("key"), proj("query")
  want = _official_loop(np.asarray(q), np.asarray(k), pos_key, pos_query, 8, 16) / math.sqrt(3 * 4)
  got = enc.apply(params, q, k, pos, pos, layer, method="logits")
  assert got.shape == (2, 2, 20, 20)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # In effect p2c reads Q^r at δ(i, j), the row c2p uses; the paper-literal δ(j, i) differs.
  literal = _official_loop(np.asarray(q), np.asarray(k), pos_key, pos_query, 8, 16, p2c_sign=1)
  assert not np.allclose(got, literal / math.sqrt(3 * 4), atol=1e-3)
  assert deberta.Encoding.CONTENT_SCALE == pytest.approx(1 / math.sqrt(3))


def test_explicit_positions_and_per_example_batch():
  kq, kk, kr = jax.random.split(jax.random.PRNGKey(5), 3)
  q = jax.random.normal(kq, (2, 5, 2, 4))
  k = jax.random.normal(kk, (2, 5, 2, 4))
  pos_key, pos_query = jax.random.normal(kr, (2, 16, 2, 4))
  pos = jnp.array([[0, 3, 4, 9, 30], [2, 5, 11, 12, 13]])
  index = deberta.relative_index(pos, pos, 8, 16)
  assert index.shape == (2, 5, 5)
  got = deberta.disentangled_terms(q, k, pos_key, pos_query, index)
  p = np.asarray(pos)
  for b in range(2):
    for i in range(5):
      for j in range(5):
        row = min(max(int(_reference_log_bucket(p[b, i] - p[b, j], 8, 16)) + 8, 0), 15)
        want = q[b, i] @ pos_key[row].T + k[b, j] @ pos_query[row].T  # [H, H]: take the diagonal
        np.testing.assert_allclose(got[b, :, i, j], np.diag(want), rtol=1e-5, atol=1e-5)


def test_table_shared_projections_per_layer():
  enc, params, *_ = _setup(layers=3, length=4, batch=1)
  shapes = jax.tree_util.tree_map(jnp.shape, params["params"])
  assert shapes["rel_embeddings"] == (16, 8) and shapes["rel_norm"] == {"scale": (8,), "bias": (8,)}
  per_layer = [n for n in shapes if n.startswith("layer")]
  assert sorted(per_layer) == sorted(f"layer{l}_pos_{w}_proj_{p}" for l in range(3)
                                     for w in ("key", "query") for p in ("kernel", "bias"))


def test_check_refuses_degenerate_buckets():
  dims = Dims(d_model=8, num_heads=2, num_layers=1, causal=False, max_position=64)
  with pytest.raises(ConfigError, match="config.encoding.max_relative_positions"):
    deberta.Encoding(dims=dims, position_buckets=256, max_relative_positions=100).check(10)
  with pytest.raises(ConfigError, match="config.encoding.position_buckets"):
    deberta.Encoding(dims=dims, position_buckets=3).check(10)


def test_smoke_encoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "deberta")
  helpers.check_smoke_results(results)
  assert results["mode"] == "encoder"


def test_decoder_refused(tmp_path):
  with pytest.raises(ConfigError, match="config.model.causal") as err:
    helpers.run_smoke(tmp_path, "deberta", **{"model.causal": True})
  assert err.value.field == "config.model.causal"
