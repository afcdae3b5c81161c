"""Complex order embeddings (Wang et al., ICLR 2020): z = r·exp(i(ω·pos + θ)) per word."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import complex as cx
from posenc.encodings.base import Dims
from tests import helpers

V, D = 7, 16  # 8 complex channels


def _module():
  dims = Dims(d_model=D, num_heads=2, num_layers=1, causal=False, max_position=64, vocab_size=V)
  return cx.Encoding(dims=dims)


TOKENS = jnp.array([[3, 4, 3, 6, 0], [5, 5, 1, 2, 0]], jnp.int32)
POS = jnp.array([[0, 1, 2, 3, 4]], jnp.int32)


def _init(m):
  return m.init(jax.random.PRNGKey(0), TOKENS, POS, method="token_embed")


def _as_complex(out):
  c = out.shape[-1] // 2
  return np.asarray(out[..., :c], np.float64) + 1j * np.asarray(out[..., c:], np.float64)


def test_initial_frequencies_follow_the_official_table():
  # FreedomIntelligence/complex-order, LANGUAGE MODELING/pytorch-complex/complex_mem_transformer.py,
  # get_sinusoid_encoding_table: 1 / 10000^(2·(j // 2) / d) for every word, PAD row zero.
  # With d = 8 complex channels: 10000^(−1/4) = 0.1, 10000^(−1/2) = 0.01, 10000^(−3/4) = 0.001.
  official = [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  np.testing.assert_allclose(cx.initial_frequencies(8), official, rtol=1e-6)
  params = _init(_module())["params"]
  assert params["frequency"].shape == (V, D // 2) and params["amplitude"].shape == (V, D // 2)
  np.testing.assert_array_equal(params["frequency"][0], 0.0)
  np.testing.assert_allclose(params["frequency"][1:], np.tile(official, (V - 1, 1)), rtol=1e-6)
  np.testing.assert_array_equal(params["phase"], 0.0)  # the official code has no initial phase


def _random_params(m):
  params = _init(m)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  return {"params": {name: jax.random.normal(k, v.shape)
                     for (name, v), k in zip(sorted(params["params"].items()), keys)}}


@pytest.mark.parametrize("delta", [1, 7, 250])
def test_shifting_position_multiplies_by_exp_i_omega_delta(delta):
  m = _module()
  params = _random_params(m)  # random r, ω and a nonzero θ
  z = _as_complex(m.apply(params, TOKENS, POS, method="token_embed"))
  z_shift = _as_complex(m.apply(params, TOKENS, POS + delta, method="token_embed"))
  omega = np.asarray(params["params"]["frequency"], np.float64)[np.asarray(TOKENS)]
  np.testing.assert_allclose(z_shift, z * np.exp(1j * omega * delta), atol=2e-4)


def test_layout_and_formula():
  m = _module()
  params = _random_params(m)
  out = m.apply(params, TOKENS, POS, method="token_embed")
  assert out.shape == (2, 5, D) and out.dtype == jnp.float32
  p = {k: np.asarray(v, np.float64) for k, v in params["params"].items()}
  b, t, j = 1, 3, 2  # token 2 at position 3, channel 2
  w = int(TOKENS[b, t])
  want = p["amplitude"][w, j] * np.exp(1j * (p["frequency"][w, j] * 3 + p["phase"][w, j]))
  assert np.isclose(out[b, t, j], want.real, atol=1e-5)            # real half first
  assert np.isclose(out[b, t, D // 2 + j], want.imag, atol=1e-5)  # imaginary half second
  # The modulus is the amplitude: position moves only the phase.
  np.testing.assert_allclose(np.abs(_as_complex(out)), np.abs(p["amplitude"][np.asarray(TOKENS)]),
                             rtol=1e-5)
  # The same word at two positions differs (order is encoded).
  assert not np.allclose(out[0, 0], out[0, 2])


@pytest.mark.parametrize("causal", [False, True])
def test_smoke_run(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "complex", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
