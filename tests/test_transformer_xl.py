"""Transformer-XL relative attention: the explicit gather, the rel-shift trick
(classic under a causal mask, two-sided in an encoder) and the factorized form
used by the module agree with a literal per-pair loop; layer sharing; smoke runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import transformer_xl as txl
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers

D, H, DH = 8, 2, 4


def _inputs(b=2, length=6, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  qv = jax.random.normal(k1, (b, length, H, DH))
  w_r = jax.random.normal(k2, (D, H, DH))
  return qv, w_r


def _loop(qv, w_r, q_pos, k_pos):
  """Σ_c (q_i + v)·W_R R_{pos_i − pos_j}, pair by pair, in float64 numpy."""
  qv, w_r = np.asarray(qv, np.float64), np.asarray(w_r, np.float64)
  q_pos = np.broadcast_to(np.asarray(q_pos), (qv.shape[0], qv.shape[1]))
  k_pos = np.broadcast_to(np.asarray(k_pos), (qv.shape[0], qv.shape[1]))
  omega = 10000.0 ** (-np.arange(0, D, 2) / D)
  b, length = qv.shape[:2]
  out = np.zeros((b, H, length, length))
  for bi in range(b):
    for i in range(length):
      for j in range(length):
        delta = q_pos[bi, i] - k_pos[bi, j]
        r = np.concatenate([np.sin(delta * omega), np.cos(delta * omega)])  # [sin | cos]
        out[bi, :, i, j] = np.einsum("hd,chd,c->h", qv[bi, i], w_r, r)
  return out


def test_relative_sinusoid_layout():
  # Transformer-XL's PositionalEmbedding: cat([sin(δω), cos(δω)]), ω_m = 10000^(−2m/d).
  r = txl.relative_sinusoid(jnp.array([0, 1, -2]), 4)
  want = [[0, 0, 1, 1],
          [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
          [math.sin(-2), math.sin(-0.02), math.cos(-2), math.cos(-0.02)]]
  np.testing.assert_allclose(r, want, rtol=1e-6, atol=1e-7)


def test_rel_shift_moves_distance_columns_onto_pairs():
  length = 5
  x = jnp.arange(length * (2 * length - 1), dtype=jnp.float32).reshape(length, 2 * length - 1)
  y = np.asarray(txl.rel_shift(x, two_sided=True))
  for i in range(length):
    for j in range(length):
      assert y[i, j] == x[i, length - 1 - i + j]  # column of distance i − j
  x = x[:, :length]
  y = np.asarray(txl.rel_shift(x, two_sided=False))
  for i in range(length):
    for j in range(i + 1):
      assert y[i, j] == x[i, length - 1 - i + j]


@pytest.mark.parametrize("offset", [0, 3])
def test_causal_shift_equals_gather_on_and_below_diagonal(offset):
  qv, w_r = _inputs()
  length = qv.shape[1]
  pos = jnp.arange(length)[None] + offset  # contiguous, any offset: distances are i − j
  want = _loop(qv, w_r, pos, pos)
  gather = txl.rel_logits_gather(qv, w_r, pos, pos, max_position=length + offset)
  factorized = txl.rel_logits_factorized(qv, w_r, pos, pos)
  shifted = txl.rel_logits_shift(qv, w_r, causal=True)
  np.testing.assert_allclose(gather, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(factorized, want, rtol=1e-4, atol=1e-4)
  lower = np.tril(np.ones((length, length), bool))
  np.testing.assert_allclose(np.asarray(shifted)[..., lower], want[..., lower], rtol=1e-4, atol=1e-4)
  # Above the diagonal the classic trick reads wrapped-around entries: an encoder cannot use it.
  assert not np.allclose(np.asarray(shifted)[..., ~lower], want[..., ~lower], atol=1e-3)


def test_two_sided_shift_equals_gather_everywhere():
  qv, w_r = _inputs(seed=1)
  length = qv.shape[1]
  pos = jnp.arange(length)[None]
  want = _loop(qv, w_r, pos, pos)
  np.testing.assert_allclose(txl.rel_logits_shift(qv, w_r, causal=False), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(txl.rel_logits_gather(qv, w_r, pos, pos, length), want, rtol=1e-4, atol=1e-4)


def test_arbitrary_positions_gather_and_factorized_exact_shift_not():
  qv, w_r = _inputs(b=2, length=5, seed=2)
  pos = jnp.array([[0, 3, 4, 9, 30], [2, 5, 11, 12, 13]])  # randomized-style, per example
  want = _loop(qv, w_r, pos, pos)
  np.testing.assert_allclose(txl.rel_logits_gather(qv, w_r, pos, pos, 31), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(txl.rel_logits_factorized(qv, w_r, pos, pos), want, rtol=1e-4, atol=1e-4)
  # The shift trick uses index distances, so it is wrong here (why the module never uses it).
  assert not np.allclose(txl.rel_logits_shift(qv, w_r, causal=False), want, atol=1e-3)


@pytest.mark.parametrize("form", ["factorized", "gather"])
def test_module_logits_and_sharing(form):
  dims = Dims(d_model=D, num_heads=H, num_layers=3, causal=False, max_position=16)
  enc = txl.Encoding(dims=dims, form=form)
  kq, kk = jax.random.split(jax.random.PRNGKey(3))
  q = jax.random.normal(kq, (2, 5, H, DH))
  k = jax.random.normal(kk, (2, 5, H, DH))
  pos = jnp.array([[0, 2, 3, 7, 15]])  # shared by the batch
  params = enc.init(jax.random.PRNGKey(4), q, k, pos, pos, 2, method="logits")
  p = params["params"]
  # u, v once (shared by layers); W_R per layer.
  assert sorted(p) == ["layer0_r_net", "layer1_r_net", "layer2_r_net", "r_r_bias", "r_w_bias"]
  assert p["r_w_bias"].shape == (H, DH) and p["layer0_r_net"].shape == (D, H, DH)
  term = enc.apply(params, q, k, pos, pos, 2, method="logits")
  assert term.shape == (2, H, 5, 5)
  content_bias = np.einsum("hd,bkhd->bhk", p["r_w_bias"], k)[:, :, None, :]
  want = (content_bias + _loop(q + p["r_r_bias"], p["layer2_r_net"], pos, pos)) / math.sqrt(DH)
  np.testing.assert_allclose(term, want, rtol=1e-4, atol=1e-5)
  other_layer = enc.apply(params, q, k, pos, pos, 0, method="logits")
  assert not np.allclose(term, other_layer)


def test_check_refuses_shift_form():
  dims = Dims(d_model=D, num_heads=H, num_layers=1, causal=True, max_position=16)
  with pytest.raises(ConfigError, match="config.encoding.form"):
    txl.Encoding(dims=dims, form="shift").check(16)


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "transformer_xl", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
