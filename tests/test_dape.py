"""DAPE: the adaptive term against a NumPy restatement of the official module, the bias it
reads, its initialisation, both modes.

Reference (restated in NumPy below): ``chuanyang-Zheng/DAPE``, ``DAPE.py``, ``AliBi_DAPE``:
``a = −tril(i − j)·slope`` (``_get_slopes``), ``forward(x) = x + a + mlp2(cat(x, a))``
with ``cat`` over the head axis (logits first) and ``mlp2 = Linear(2H, W), LeakyReLU(),
Linear(W, H)`` applied per pair; ``x`` the scaled attention scores.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import dape
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _official_slopes(n):
  """``AliBi_DAPE._get_slopes`` (n a power of two here)."""
  start = 2 ** (-(2 ** -(math.log2(n) - 3)))
  return [start * start ** i for i in range(n)]


def _official_alibi_dape(x, w1, b1, w2, b2):
  """``AliBi_DAPE.forward(x)`` for ``x [B, H, T, T]``; Linear weights as ``[in, out]``."""
  x = np.asarray(x, np.float64)
  h, t = x.shape[1], x.shape[-1]
  i, j = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
  a = -np.tril(i - j)[None] * np.asarray(_official_slopes(h))[:, None, None]  # [H, T, T]
  cat = np.concatenate([x, np.broadcast_to(a, x.shape)], axis=1)  # [B, 2H, T, T]
  u = np.moveaxis(cat, 1, -1) @ np.asarray(w1, np.float64) + np.asarray(b1)
  u = np.where(u > 0, u, 0.01 * u)  # LeakyReLU
  mlp = np.moveaxis(u @ np.asarray(w2, np.float64) + np.asarray(b2), -1, 1)
  return x + a + mlp


def _dims(causal=True, layers=2, heads=4, dh=4):
  return Dims(d_model=heads * dh, num_heads=heads, num_layers=layers, causal=causal,
              max_position=32)


def _qk(t=6, heads=4, dh=4):
  kq, kk = jax.random.split(jax.random.PRNGKey(0))
  return jax.random.normal(kq, (2, t, heads, dh)), jax.random.normal(kk, (2, t, heads, dh))


def _init(enc, q, k, pos):
  every_layer = lambda m, *a: [m.logits(*a, layer) for layer in range(m.dims.num_layers)]
  return enc.init(jax.random.PRNGKey(1), q, k, pos, pos, method=every_layer)


def test_alibi_dape_equals_the_official_module():
  enc = dape.Encoding(dims=_dims(), bias="alibi")
  q, k = _qk()
  pos = jnp.arange(6)[None]
  params = _init(enc, q, k, pos)["params"]
  assert sorted(params) == sorted(f"mlp_layer{l}_{n}" for l in range(2)
                                  for n in ("w1", "b1", "w2", "b2"))  # ALiBi has none
  x = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0  # the model's scaled content logits
  causal = np.tril(np.ones((6, 6), bool))
  for layer in range(2):
    got = enc.apply({"params": params}, q, k, pos, pos, layer, method=enc.logits)
    mlp = [params[f"mlp_layer{layer}_{n}"] for n in ("w1", "b1", "w2", "b2")]
    want = _official_alibi_dape(x, *mlp) - x  # the term added to the content logits
    np.testing.assert_allclose(np.asarray(got)[..., causal], want[..., causal],
                               rtol=1e-5, atol=1e-5)


def test_initialisation_is_torch_linear_default():
  enc = dape.Encoding(dims=_dims(heads=8, dh=2), bias="alibi", mlp_width=32)
  q, k = _qk(heads=8, dh=2)
  params = _init(enc, q, k, jnp.arange(6)[None])["params"]
  for name, fan_in in (("w1", 16), ("b1", 16), ("w2", 32), ("b2", 32)):
    p = np.asarray(params[f"mlp_layer0_{name}"])
    assert np.abs(p).max() <= 1 / math.sqrt(fan_in) and np.abs(p).max() > 0.5 / math.sqrt(fan_in)
  assert params["mlp_layer0_w1"].shape == (16, 32) and params["mlp_layer0_w2"].shape == (32, 8)
  assert not np.allclose(params["mlp_layer0_w1"], params["mlp_layer1_w1"])  # one MLP per layer


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", ["kerple", "fire"])
def test_with_a_zero_mlp_the_term_is_the_bias_schemes_own(bias, causal):
  enc = dape.Encoding(dims=_dims(causal=causal), bias=bias)
  q, k = _qk()
  pos = jnp.array([[0, 3, 4, 9, 10, 17]])  # gaps: the bias reads the explicit positions
  params = dict(_init(enc, q, k, pos)["params"])
  inner = params["scheme"]
  zeroed = {n: (jnp.zeros_like(v) if n.startswith("mlp_layer1") else v) for n, v in params.items()}
  got = enc.apply({"params": zeroed}, q, k, pos, pos, 1, method=enc.logits)
  own = dape.BIASES[bias](dims=enc.dims)
  want = own.apply({"params": inner}, q, k, pos, pos, 1, method=own.logits)
  np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-6, atol=1e-6)
  if bias == "kerple":
    assert sorted(inner) == ["r1", "r2"]  # KERPLE's own parameters, shared by the layers


def test_the_mlp_reads_the_content_logits():
  enc = dape.Encoding(dims=_dims(layers=1), bias="kerple")
  q, k = _qk()
  pos = jnp.arange(6)[None]
  params = _init(enc, q, k, pos)["params"]
  grad_k = jax.grad(lambda k_: enc.apply({"params": params}, q, k_, pos, pos, 0,
                                         method=enc.logits).sum())(k)
  assert float(jnp.abs(grad_k).sum()) > 0  # a bias scheme alone would not depend on k


def test_bad_settings_are_refused(tmp_path):
  for overrides, field in (({"encoding.bias": "rope"}, "config.encoding.bias"),
                           ({"encoding.mlp_width": 0}, "config.encoding.mlp_width")):
    with pytest.raises(ConfigError) as e:
      helpers.run_smoke(tmp_path, "dape", **overrides)
    assert e.value.field == field


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "dape", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
