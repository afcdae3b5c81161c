"""Multiplicative absolute encoding: x ⊙ (1 + p) learned (zero init) or x ⊙ p sinusoidal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import multiplicative, sinusoidal
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _module(variant="learned", d=8, **kw):
  dims = Dims(d_model=d, num_heads=2, num_layers=1, causal=False, max_position=32)
  return multiplicative.Encoding(dims=dims, variant=variant, **kw)


def _init(m, length=6):
  x = jnp.zeros((1, length, m.dims.d_model))
  return m.init(jax.random.PRNGKey(0), x, jnp.arange(length, dtype=jnp.int32)[None], method="embed")


X = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 8))
Y = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 8))
POS = jnp.array([[0, 1, 2, 7, 8, 15], [3, 4, 5, 6, 30, 31]], jnp.int32)


def test_learned_variant_is_the_identity_at_init():
  m = _module(max_len=32)
  params = _init(m)
  assert set(params["params"]) == {"table"}
  np.testing.assert_array_equal(m.apply(params, X, POS, method="embed"), X)


def _trained(m):
  params = _init(m)
  if m.variant == "learned":
    params = {"params": {"table": 0.3 * jax.random.normal(jax.random.PRNGKey(5), (32, 8))}}
  return params


@pytest.mark.parametrize("variant", ["learned", "sinusoidal"])
def test_linear_in_x(variant):
  m = _module(variant, max_len=32)
  params = _trained(m)
  f = lambda x: m.apply(params, x, POS, method="embed")
  np.testing.assert_allclose(f(2.5 * X - 0.5 * Y), 2.5 * f(X) - 0.5 * f(Y), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(f(jnp.zeros_like(X)), 0.0)  # no additive part


def test_formulas():
  learned = _module("learned", max_len=32)
  params = _trained(learned)
  table = params["params"]["table"]
  np.testing.assert_allclose(learned.apply(params, X, POS, method="embed"),
                             X * (1.0 + table[POS]), rtol=1e-6)
  sin = _module("sinusoidal")
  np.testing.assert_allclose(sin.apply({}, X, POS[:1], method="embed"),
                             X * sinusoidal.table(POS[:1], 8), rtol=1e-6)


def test_limits_are_refused_with_the_field_named():
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    _module(max_len=16).check(17)
  _module(max_len=16).check(16)
  _module(max_len=16, fallback="clamp").check(100)
  _module("sinusoidal", max_len=16).check(10_000)  # parameter-free: any position
  with pytest.raises(ConfigError, match="config.encoding.variant"):
    _module("additive").check(4)


@pytest.mark.parametrize("causal", [False, True])
def test_smoke_run(tmp_path, causal):
  # The learned variant (the default); the sinusoidal one shares its code path past the scale.
  results = helpers.run_smoke(tmp_path, "multiplicative", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
