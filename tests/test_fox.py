"""FoX: the decay bias, forgetting attention against a NumPy restatement of the official
formula, the layer's gate and projections, decoder only.

Reference (restated in NumPy below): ``zhixuan-lin/forgetting-transformer``,
``src/forgetting_transformer/ops/forgetting_attention.py`` (``log_lambda =
cumsum(log_fgate)``; logits ``q·k·sm_scale + log_lambda_i − log_lambda_j`` under a causal
mask; ``sm_scale = 1/sqrt(d)``) and ``model/forgetting_transformer/
modeling_forgetting_transformer.py`` (``log_fgate = logsigmoid(fgate_proj(x))``, a
``Linear(hidden, heads, bias=True)``; q/k/v/o without bias).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import fox
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _official(q, k, v, log_fgate):
  """The official forward, one (b, h) at a time: q, k, v [B, T, H, D], log_fgate [B, T, H]."""
  q, k, v, lf = (np.asarray(a, np.float64) for a in (q, k, v, log_fgate))
  b_, t, h_, d = q.shape
  out = np.zeros_like(q)
  for b in range(b_):
    for h in range(h_):
      log_lambda = np.cumsum(lf[b, :, h])
      s = q[b, :, h] @ k[b, :, h].T / math.sqrt(d) + log_lambda[:, None] - log_lambda[None, :]
      s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      out[b, :, h] = (p / p.sum(-1, keepdims=True)) @ v[b, :, h]
  return out


def _qkvf(t=7, heads=2, d=4, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  q, k, v = (jax.random.normal(kk, (2, t, heads, d)) for kk in keys[:3])
  log_f = jax.nn.log_sigmoid(2.0 * jax.random.normal(keys[3], (2, t, heads)))
  return q, k, v, log_f


CAUSAL = lambda t: jnp.tril(jnp.ones((t, t), bool))[None, None]


def test_decay_bias_is_the_difference_of_cumulative_log_gates():
  _, _, _, log_f = _qkvf()
  d = np.asarray(fox.decay_bias(log_f, CAUSAL(7)))
  c = np.cumsum(np.asarray(log_f, np.float64), axis=1)  # [B, T, H]
  want = np.moveaxis(c, 1, 2)[:, :, :, None] - np.moveaxis(c, 1, 2)[:, :, None, :]
  causal = np.tril(np.ones((7, 7), bool))
  np.testing.assert_allclose(d[..., causal], want[..., causal], rtol=1e-5, atol=1e-5)
  assert np.all(np.diagonal(d, axis1=-2, axis2=-1) == 0.0)  # D_ii = 0: no gate on itself


def test_attention_equals_the_official_formula():
  q, k, v, log_f = _qkvf()
  o, w = fox.forgetting_attention(q, k, v, log_f, CAUSAL(7))
  np.testing.assert_allclose(o, _official(q, k, v, log_f), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-6)


def test_a_constant_gate_is_alibi_with_slope_minus_log_f():
  """log f_t = −m for every t gives D_ij = −m·(i − j): ALiBi's bias (FoX's paper notes this)."""
  q, k, v, _ = _qkvf()
  m = jnp.array([0.5, 0.125])
  log_f = jnp.broadcast_to(-m, (2, 7, 2))
  _, w = fox.forgetting_attention(q, k, v, log_f, CAUSAL(7))
  i, j = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
  s = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0 - np.asarray(m)[None, :, None, None] * (i - j)
  s = np.where(j <= i, s, -np.inf)
  want = np.exp(s - s.max(-1, keepdims=True))
  np.testing.assert_allclose(w, want / want.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_gates_of_one_give_plain_causal_attention():
  q, k, v, _ = _qkvf()
  o, _ = fox.forgetting_attention(q, k, v, jnp.zeros((2, 7, 2)), CAUSAL(7))
  np.testing.assert_allclose(o, _official(q, k, v, np.zeros((2, 7, 2))), rtol=1e-5, atol=1e-5)


def test_a_decoding_step_sees_the_same_bias_as_the_full_pass():
  """A query at slot 4 of a buffer of 7 (keys after it masked) gets row 4 of the full pass."""
  q, k, v, log_f = _qkvf()
  o_full, _ = fox.forgetting_attention(q, k, v, log_f, CAUSAL(7))
  step_mask = (jnp.arange(7) <= 4)[None, None, None, :]
  o_step, _ = fox.forgetting_attention(q[:, 4:5], k, v, log_f, step_mask)
  np.testing.assert_allclose(o_step[:, 0], o_full[:, 4], rtol=1e-5, atol=1e-6)


def _dims(layers=2, heads=2, dh=4):
  return Dims(d_model=heads * dh, num_heads=heads, num_layers=layers, causal=True, max_position=16)


def _apply_layer(enc, variables, x, layer, mask):
  def run(m, x):
    q, k, v = (m.projection(x, kind, layer) for kind in ("query", "key", "value"))
    o, w = m.attend(q, k, v, None, None, mask, layer)
    return m.projection(o, "out", layer), k
  return enc.apply(variables, x, method=run)


def test_layer_equals_numpy_with_the_gate_from_the_input():
  enc = fox.Encoding(dims=_dims())
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 6, 8))
  mask = CAUSAL(6)
  every_layer = lambda m, x: [_apply_layer_bound(m, x, l, mask) for l in range(2)]
  variables = enc.init(jax.random.PRNGKey(0), x, method=every_layer)
  p = variables["params"]
  assert sorted(p) == sorted(f"layer{l}_{n}" for l in range(2)
                             for n in ("query", "key", "value", "out", "fgate"))
  assert all("bias" not in p[f"layer0_{n}"] for n in ("query", "key", "value", "out"))
  np.testing.assert_array_equal(p["layer0_fgate"]["bias"], 0.0)  # gates start at σ(0) = 1/2
  assert 0.005 < float(np.std(p["layer0_fgate"]["kernel"])) < 0.05  # N(0, 0.02)
  # Perturb the gate so it is far from 1/2 and differs by head and token.
  p = dict(p)
  p["layer1_fgate"] = {"kernel": jax.random.normal(jax.random.PRNGKey(5), (8, 2)),
                       "bias": jnp.array([1.0, -1.0])}
  out, key = _apply_layer(enc, {"params": p}, x, 1, mask)
  assert key.shape == (2, 6, 2, 5) and key.dtype == jnp.float32  # d_h keys + log f
  xs = np.asarray(x, np.float64)
  proj = lambda n: np.einsum("bld,dhe->blhe", xs, np.asarray(p[f"layer1_{n}"]["kernel"]))
  logits = xs @ np.asarray(p["layer1_fgate"]["kernel"]) + np.asarray(p["layer1_fgate"]["bias"])
  log_fgate = -np.logaddexp(0.0, -logits)  # logsigmoid
  np.testing.assert_allclose(key[..., -1], log_fgate, rtol=1e-5, atol=1e-6)
  o = _official(proj("query"), proj("key"), proj("value"), log_fgate)
  want = np.einsum("blhe,hed->bld", o, np.asarray(p["layer1_out"]["kernel"]))
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


def _apply_layer_bound(m, x, layer, mask):
  q, k, v = (m.projection(x, kind, layer) for kind in ("query", "key", "value"))
  o, _ = m.attend(q, k, v, None, None, mask, layer)
  return m.projection(o, "out", layer)


def test_gradients_reach_the_gate():
  enc = fox.Encoding(dims=_dims(layers=1))
  x = jax.random.normal(jax.random.PRNGKey(3), (1, 5, 8))
  variables = enc.init(jax.random.PRNGKey(0), x, 0, CAUSAL(5), method=_apply_layer_bound)
  loss = lambda p: jnp.sum(enc.apply({"params": p}, x, 0, CAUSAL(5), method=_apply_layer_bound) ** 2)
  g = jax.jit(jax.grad(loss))(variables["params"])
  assert float(jnp.abs(g["layer0_fgate"]["kernel"]).sum()) > 0
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree_util.tree_leaves(g))


def test_encoder_mode_is_refused(tmp_path):
  with pytest.raises(ConfigError) as e:
    helpers.run_smoke(tmp_path, "fox", **{"model.causal": False})
  assert e.value.field == "config.model.causal"


def test_smoke_decoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "fox")
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"
