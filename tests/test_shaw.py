"""Shaw et al. (2018) relative position representations: index convention, the
memory-light key/value terms against the explicit [B,H,L,L,Dh] equations,
per-layer tables, and smoke runs in both modes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import shaw
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _dims(layers=2, causal=False):
  return Dims(d_model=8, num_heads=2, num_layers=layers, causal=causal, max_position=64)


def test_relative_index_hand_values():
  # tensor2tensor _generate_relative_positions_matrix: clip(j − i, −k, k) + k (key minus query).
  pos = jnp.arange(4)[None]
  got = shaw.relative_index(pos, pos, 2)
  want = [[2, 3, 4, 4],
          [1, 2, 3, 4],
          [0, 1, 2, 3],
          [0, 0, 1, 2]]
  assert got.shape == (1, 4, 4)
  np.testing.assert_array_equal(got[0], want)
  # Explicit, non-contiguous positions: distances come from the positions, not the indices.
  pos = jnp.array([[0, 5, 6, 20]])
  got = shaw.relative_index(pos, pos, 3)
  np.testing.assert_array_equal(got[0], [[3, 6, 6, 6], [0, 3, 4, 6], [0, 2, 3, 6], [0, 0, 0, 3]])
  per_example = shaw.relative_index(jnp.array([[0, 1, 2], [3, 9, 10]]), jnp.array([[0, 1, 2], [3, 9, 10]]), 16)
  assert per_example.shape == (2, 3, 3)
  assert int(per_example[1, 0, 1]) == 16 + 6


def _explicit(q, k, v, key_table, value_table, index):
  """Shaw's equations with materialised a^K_ij, a^V_ij: [B, Lq, Lk, Dh]."""
  index = np.broadcast_to(index, (q.shape[0],) + index.shape[1:])
  a_k = key_table[index]
  a_v = value_table[index]
  dh = q.shape[-1]
  e = (np.einsum("bqhd,bkhd->bhqk", q, k) + np.einsum("bqhd,bqkd->bhqk", q, a_k)) / math.sqrt(dh)
  alpha = np.exp(e - e.max(-1, keepdims=True))
  alpha /= alpha.sum(-1, keepdims=True)
  z = np.einsum("bhqk,bkhd->bqhd", alpha, v) + np.einsum("bhqk,bqkd->bqhd", alpha, a_v)
  return e, alpha, z


@pytest.mark.parametrize("per_example", [False, True])
def test_hooks_equal_explicit_equations(per_example):
  b, length, h, dh, k_max = 3, 7, 2, 4, 2
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (np.asarray(jax.random.normal(key, (b, length, h, dh))) for key in keys)
  if per_example:  # sorted distinct positions, different per sequence (randomized sampler)
    pos = jnp.sort(jax.random.choice(jax.random.PRNGKey(1), 40, (length,), replace=False))
    pos = jnp.stack([pos, pos + 3, pos * 2])
  else:
    pos = jnp.arange(length)[None] + 5
  enc = shaw.Encoding(dims=Dims(d_model=h * dh, num_heads=h, num_layers=2, causal=False,
                                max_position=128), max_distance=k_max)
  params = enc.init(jax.random.PRNGKey(2), q, k, pos, pos, 1, method="logits")
  p = params["params"]
  key_table = np.asarray(p["layer1_relative_keys"])
  value_table = np.asarray(p["layer1_relative_values"])
  index = np.asarray(shaw.relative_index(pos, pos, k_max))
  e, alpha, z = _explicit(q, k, v, key_table, value_table, index)

  # What the model does with the hooks: content q·k/sqrt(dh) + logits hook; α·v + values hook.
  term = enc.apply(params, q, k, pos, pos, 1, method="logits")
  assert term.shape == (b, h, length, length)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh) + np.asarray(term)
  np.testing.assert_allclose(logits, e, rtol=1e-5, atol=1e-5)
  extra = enc.apply(params, jnp.asarray(alpha), pos, pos, 1, method="values")
  assert extra.shape == (b, length, h, dh)
  out = np.einsum("bhqk,bkhd->bqhd", alpha, v) + np.asarray(extra)
  np.testing.assert_allclose(out, z, rtol=1e-5, atol=1e-5)


def test_bucket_weights_onehot_and_scatter_paths_agree():
  w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 5)), -1)
  index = shaw.relative_index(jnp.arange(5)[None], jnp.arange(5)[None], 2)
  shared = shaw.bucket_weights(w, index, 5)                                   # one-hot path
  tiled = shaw.bucket_weights(w, jnp.broadcast_to(index, (2, 5, 5)), 5)       # scatter path
  np.testing.assert_allclose(shared, tiled, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(shared.sum(-1), 1.0, rtol=1e-6)  # every weight lands in one bucket
  # Query 0 sees keys at distance 0, 1, 2, 3, 4 -> buckets 2, 3, 4, 4, 4 (clipped at k = 2).
  np.testing.assert_allclose(shared[0, 0, 0], [0, 0, w[0, 0, 0, 0], w[0, 0, 0, 1], w[0, 0, 0, 2:].sum()],
                             rtol=1e-6)


def test_tables_are_per_layer_and_shared_by_heads():
  enc = shaw.Encoding(dims=_dims(layers=3), max_distance=16)
  q = jnp.zeros((1, 4, 2, 4))
  pos = jnp.arange(4)[None]
  p = enc.init(jax.random.PRNGKey(0), q, q, pos, pos, 0, method="logits")["params"]
  assert sorted(p) == sorted([f"layer{l}_relative_{kind}" for l in range(3) for kind in ("keys", "values")])
  assert all(v.shape == (33, 4) for v in p.values())  # (2k+1) x d_h, no head axis
  assert not np.allclose(p["layer0_relative_keys"], p["layer1_relative_keys"])


def test_check_refuses_zero_distance():
  with pytest.raises(ConfigError, match="config.encoding.max_distance"):
    shaw.Encoding(dims=_dims(), max_distance=0).check(10)


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "shaw", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
