"""DAPE: the adaptive term against a NumPy restatement of the official module, the bias it
reads (per-layer KERPLE; FIRE with LeakyReLU and half the training positions as threshold, as
the official ``ParallelKerpleLog_C`` / ``FIRE_C``), its initialisation, both modes.

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

from posenc.encodings import dape, fire, kerple
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


def _dims(causal=True, layers=2, heads=4, dh=4, train_positions=20):
  return Dims(d_model=heads * dh, num_heads=heads, num_layers=layers, causal=causal,
              max_position=32, train_positions=train_positions)


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


def _zero_mlps(params):
  return {n: (jnp.zeros_like(v) if n.startswith("mlp_layer") else v) for n, v in params.items()}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", ["kerple", "fire"])
def test_with_a_zero_mlp_the_term_is_the_bias_schemes_own(bias, causal):
  enc = dape.Encoding(dims=_dims(causal=causal), bias=bias)
  q, k = _qk()
  pos = jnp.array([[0, 3, 4, 9, 10, 17]])  # gaps: the bias reads the explicit positions
  params = dict(_init(enc, q, k, pos)["params"])
  got = enc.apply({"params": _zero_mlps(params)}, q, k, pos, pos, 1, method=enc.logits)
  if bias == "kerple":  # layer 1's own pair, through the standalone scheme's module
    own, inner = kerple.Encoding(dims=enc.dims), params["scheme_layer1"]
  else:
    own, inner = enc.bias_scheme(parent=None), params["scheme"]
  want = own.apply({"params": inner}, q, k, pos, pos, 1, method=own.logits)
  np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-6, atol=1e-6)


def test_kerple_parameters_are_per_layer():
  """``ParallelKerpleLog_C(neox_args, layer_number)``: each attention layer owns its pair."""
  enc = dape.Encoding(dims=_dims(layers=2), bias="kerple")
  q, k = _qk()
  pos = jnp.arange(6)[None]
  params = dict(_init(enc, q, k, pos)["params"])
  assert "scheme" not in params
  assert sorted(params["scheme_layer0"]) == sorted(params["scheme_layer1"]) == ["r1", "r2"]
  assert params["scheme_layer0"]["r1"].shape == (4,)
  params = _zero_mlps(params)
  params["scheme_layer0"] = {"r1": jnp.full(4, 0.5), "r2": jnp.full(4, 0.5)}
  params["scheme_layer1"] = {"r1": jnp.full(4, 1.5), "r2": jnp.full(4, 0.25)}
  distance = np.maximum(np.arange(6)[:, None] - np.arange(6)[None, :], 0)
  for layer, (r1, r2) in enumerate(((0.5, 0.5), (1.5, 0.25))):
    got = enc.apply({"params": params}, q, k, pos, pos, layer, method=enc.logits)
    np.testing.assert_allclose(got[0, 0], -r1 * np.log1p(r2 * distance), rtol=1e-6, atol=1e-6)
  b0, b1 = (enc.apply({"params": params}, q, k, pos, pos, l, method=enc.logits) for l in (0, 1))
  assert float(jnp.abs(b0 - b1).max()) > 0.1


def _fire_probe(enc, params, slope_probe):
  """Layer 0's FIRE function set so that its head 0 reads out one hidden unit: ``hidden =
  act(w·x + b)`` with ``(w, b) = (0, −1)`` (``slope_probe``, a negative input) or ``(1, 0)``
  (the normalised distance itself); the DAPE MLP zeroed, so the term is the bias alone."""
  params = _zero_mlps(dict(params))
  inner = jax.tree_util.tree_map(lambda x: x, params["scheme"])
  fn = dict(inner["fire_layer0"])
  w, b = (0.0, -1.0) if slope_probe else (1.0, 0.0)
  fn["hidden"] = {"kernel": jnp.zeros((1, 32)).at[0, 0].set(w), "bias": jnp.zeros(32).at[0].set(b)}
  fn["out"] = {"kernel": jnp.zeros((32, 4)).at[0, 0].set(1.0), "bias": jnp.zeros(4)}
  inner = dict(inner)
  inner["fire_layer0"] = fn
  params["scheme"] = inner
  return params


def test_fire_in_dape_uses_leaky_relu():
  """``FIRE_C``'s MLP is ``Linear(1, W), LeakyReLU(), Linear(W, H)``: a negative hidden input
  passes with slope 0.01 (FIRE's own ReLU would give 0)."""
  enc = dape.Encoding(dims=_dims(), bias="fire")
  q, k = _qk()
  pos = jnp.arange(6)[None]
  params = _fire_probe(enc, _init(enc, q, k, pos)["params"], slope_probe=True)
  got = enc.apply({"params": params}, q, k, pos, pos, 0, method=enc.logits)
  np.testing.assert_allclose(got[:, 0], -0.01, rtol=1e-6)
  np.testing.assert_allclose(got[:, 1:], 0.0, atol=1e-7)
  # Standalone FIRE keeps Li et al.'s ReLU: the same parameters give 0.
  own = fire.Encoding(dims=enc.dims)
  relu = own.apply({"params": params["scheme"]}, q, k, pos, pos, 0, method=own.logits)
  np.testing.assert_allclose(relu, 0.0, atol=1e-7)
  assert fire.Encoding.NEGATIVE_SLOPE == 0.0 and "negative_slope" not in fire.Encoding.options()


@pytest.mark.parametrize("train_positions,fire_threshold,want", [(20, 0.0, 10.0), (21, 0.0, 10.0),
                                                                  (20, 3.0, 3.0)])
def test_fire_in_dape_threshold_is_half_the_training_positions(train_positions, fire_threshold,
                                                                want):
  """``FIRE_C`` starts its threshold at ``init_L // 2``: here half ``Dims.train_positions``
  (or ``fire_threshold``), against standalone FIRE's 512."""
  option = {"fire_threshold": fire_threshold} if fire_threshold else {}
  enc = dape.Encoding(dims=_dims(train_positions=train_positions), bias="fire", **option)
  q, k = _qk(t=6)
  pos = jnp.array([[0, 2, 5, 9, 14, 25]])  # queries below and above the threshold
  params = _fire_probe(enc, _init(enc, q, k, pos)["params"], slope_probe=False)
  assert float(params["scheme"]["fire_layer0"]["length_multiplier"]) == 1.0
  got = enc.apply({"params": params}, q, k, pos, pos, 0, method=enc.logits)
  expected = fire.normalized_distance(pos, pos, 0.1, want)  # ψ(|i − j|) / ψ(max(L̂, i))
  np.testing.assert_allclose(got[0, 0], expected[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(expected, fire.normalized_distance(pos, pos, 0.1, 512.0))
  assert enc.threshold() == want


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


@pytest.mark.parametrize("kwargs,train_positions,says", [
    ({"bias": "fire", "fire_threshold": -1.0}, 20, ">= 0"),
    ({"bias": "kerple", "fire_threshold": 8.0}, 20, "only to --config.encoding.bias=fire"),
    ({"bias": "fire"}, 0, "Dims.train_positions"),  # no training bound given: say what to set
    ({"bias": "fire"}, 1, "Dims.train_positions")])
def test_bad_fire_thresholds_are_refused(kwargs, train_positions, says):
  enc = dape.Encoding(dims=_dims(train_positions=train_positions), **kwargs)
  with pytest.raises(ConfigError) as e:
    enc.check(32)
  assert e.value.field == "config.encoding.fire_threshold" and says in str(e.value)
  dape.Encoding(dims=_dims(train_positions=0), bias="fire", fire_threshold=4.0).check(32)


@pytest.mark.parametrize("causal,bias", [(False, "kerple"), (True, "kerple"), (True, "fire")])
def test_smoke(tmp_path, causal, bias):
  results = helpers.run_smoke(tmp_path, "dape", **{"model.causal": causal, "encoding.bias": bias})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
