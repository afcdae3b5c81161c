"""Multiplicative absolute encoding: x ⊙ (1 + p) learned (zero init) or x ⊙ p sinusoidal; the
learned table sized to the training positions, and what a position past them receives."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
from posenc import evaluation, train
from posenc.encodings import multiplicative, sinusoidal
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _module(variant="learned", d=8, trained=0, **kw):
  dims = Dims(d_model=d, num_heads=2, num_layers=1, causal=False, max_position=32,
              train_positions=trained)
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
  # Dims.train_positions unknown (0): every row of an explicit table is read.
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    _module(max_len=16, fallback="error").check(17)
  _module(max_len=16, fallback="error").check(16)
  _module(max_len=16, fallback="clamp").check(100)
  _module("sinusoidal", max_len=16).check(10_000)  # parameter-free: any position
  with pytest.raises(ConfigError, match="config.encoding.variant"):
    _module("additive").check(4)
  with pytest.raises(ConfigError, match="config.encoding.fallback"):
    _module(max_len=16, fallback="wrap").check(4)
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    _module().check(4)  # max_len 0 sizes the table to a training bound this model lacks


@pytest.mark.parametrize("max_len", [0, 32])  # the default; a longer table (an old run's shape)
def test_a_position_past_training_reads_the_last_trained_row(max_len):
  """Past the trained rows the scale is 1 + P[n − 1]; rows past n (zero: never trained, so
  x ⊙ (1 + 0) = x, no position at all) are never read."""
  trained = 5
  m = _module(max_len=max_len, trained=trained)
  assert m.fallback == "clamp" and (m.rows(), m.basis()) == (max_len or trained, trained)
  assert _init(m)["params"]["table"].shape == (m.rows(), 8)
  table = 0.3 * jax.random.normal(jax.random.PRNGKey(5), (m.rows(), 8))
  pos = jnp.arange(12, dtype=jnp.int32)[None]
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 8))
  got = m.apply({"params": {"table": table}}, x, pos, method="embed")
  np.testing.assert_allclose(got[:, :trained], x[:, :trained] * (1.0 + table[:trained]), rtol=1e-6)
  np.testing.assert_allclose(got[:, trained:], x[:, trained:] * (1.0 + table[trained - 1]),
                             rtol=1e-6)
  m.check(10_000)  # clamp: any position
  # At init (zero table) the rows past training are the identity, which is never read as such:
  # the last trained row is, whatever it learned.
  zero_past = table.at[trained:].set(0.0)
  np.testing.assert_array_equal(
      m.apply({"params": {"table": zero_past}}, x, pos, method="embed")[:, trained:],
      got[:, trained:])


def test_error_fallback_refuses_positions_past_training_naming_the_field():
  m = _module(trained=5, fallback="error")
  m.check(5)
  with pytest.raises(ConfigError) as err:
    m.check(6)
  assert err.value.field == "config.encoding.fallback"
  assert "--config.encoding.fallback=clamp" in str(err.value)
  assert "--config.encoding.variant=sinusoidal" in str(err.value)
  # A longer explicit table does not make its untrained rows positions.
  with pytest.raises(ConfigError, match="config.encoding.fallback"):
    _module(trained=5, fallback="error", max_len=32).check(6)
  # An explicit table shorter than training: its own field, and the size that works.
  with pytest.raises(ConfigError, match=r"config\.encoding\.max_len.*at least 5"):
    _module(trained=5, fallback="error", max_len=3).check(5)


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_presets_size_the_table_to_the_training_positions(preset):
  c = helpers.config("multiplicative", preset)
  s = train.setup(c)
  n = data_lib.total_length(s.task, c.task.train_max_length)  # input + answer, contiguous from 0
  assert (c.encoding.variant, c.encoding.max_len, c.encoding.fallback) == ("learned", 0, "clamp")
  assert n == s.train_positions() == {"smoke": 12, "default": 32, "paper": 80}[preset]
  x, pos = jnp.zeros((1, 4, c.model.d_model)), jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: s.model(1).encoding.init(jax.random.PRNGKey(0), x, pos,
                                                           method="embed"))
  assert shapes["params"]["table"].shape == (n, c.model.d_model)
  assert data_lib.total_length(s.task, c.eval.max_length) > n  # evaluation goes past them


def test_error_fallback_in_a_run_is_refused_before_any_compute(tmp_path):
  c = helpers.config("multiplicative", **{"encoding.fallback": "error"})  # 12 trained, 20 evaluated
  c.workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match=r"config\.encoding\.fallback.*at most 12 tokens"):
    train.train_and_evaluate(c, log=lambda *_: None)
  assert not os.path.exists(c.workdir)
  train.setup(helpers.config("multiplicative", **{"encoding.fallback": "error",
                                                  "eval.max_length": 6}))


def test_sinusoidal_variant_reports_nothing():
  s = train.setup(helpers.config("multiplicative", **{"encoding.variant": "sinusoidal"}))
  params = train.init_state(s, train.root_keys(0)["init"])["params"]
  assert evaluation.encoding_report(s, params) == [{}]


@pytest.mark.parametrize("causal", [False, True])
def test_smoke_run(tmp_path, causal):
  # The learned variant (the default); the sinusoidal one shares its code path past the scale.
  # Training lengths 6 only, so all 12 positions train in every step.
  overrides = {"model.causal": causal, "task.train_min_length": 6}
  results = helpers.run_smoke(tmp_path, "multiplicative", **overrides)
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
  # Smoke: training reaches 12 positions (reverse_string, length 6: input + answer).
  assert results["encoding_report"] == {"table_rows": 12.0, "trained_rows": 12.0,
                                        "train_positions": 12.0, "fallback_clamp": 1.0}
  source = str(tmp_path / "multiplicative-run")
  table = np.asarray(train.load_params(source)[0]["encoding"]["table"])
  assert table.shape == (12, helpers.config("multiplicative").model.d_model)
  # Every row trained, the last one included: past training the scale is 1 + P[11], not 1.
  assert (np.abs(table).max(-1) > 0).all()
  if causal:
    return
  # Warm start: evaluate the trained run further out; every parameter loads.
  warm = helpers.warm_start_further(tmp_path, "multiplicative", source, 12, **overrides)
  assert warm["eval_range"] == [1, 12] and warm["encoding_report"]["trained_rows"] == 12.0
