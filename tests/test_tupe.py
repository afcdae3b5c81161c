"""TUPE: the untied position term against its formula, computed once and shared by
all layers (batch-free for shared positions), TUPE-R's T5 bias, the table sized to the
training positions and what a position past them receives, encoder only."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
from posenc import train
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
  """(p_i U^Q + b)(p_j U^K + b)ᵀ / sqrt(2·d_h) with p = LayerNorm(P)[pos], per head (rows of
  the whole table ``P``: the caller picks which rows the positions read)."""
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
  # Dims.train_positions unknown (0): every row of an explicit table is read.
  enc, *_ = _setup(max_len=32)
  enc = enc.clone(fallback="error")
  enc.check(32)  # positions 0..31 fit
  with pytest.raises(ConfigError, match="config.encoding.max_len") as err:
    enc.check(33)
  assert "at least 33" in str(err.value)
  with pytest.raises(ConfigError, match="config.encoding.fallback"):
    enc.clone(fallback="wrap").check(4)


def _trained_dims(trained, max_position=64):
  return Dims(d_model=D, num_heads=H, num_layers=2, causal=False, max_position=max_position,
              train_positions=trained)


@pytest.mark.parametrize("max_len", [0, 32])  # the default; a longer table (an old run's shape)
def test_a_position_past_training_reads_the_last_trained_row(max_len):
  """Past the trained rows, the position term is position n − 1's; rows past n are never read
  (at init LayerNorm would blow their N(0, 0.02) noise up to a full-size random position)."""
  trained = 5
  enc = tupe.Encoding(dims=_trained_dims(trained), max_len=max_len)
  assert enc.fallback == "clamp" and enc.basis() == trained
  assert enc.rows() == (max_len or trained)
  q = jax.random.normal(jax.random.PRNGKey(1), (1, 12, H, DH))
  pos = jnp.arange(12, dtype=jnp.int32)[None]
  params = enc.init(jax.random.PRNGKey(0), q, q, pos, pos, 0, method="logits")
  assert params["params"]["pos"].shape == (enc.rows(), D)
  params = jax.tree_util.tree_map(
      lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), params)
  term = np.asarray(enc.apply(params, q, q, pos, pos, 0, method="logits"))
  p = jax.tree_util.tree_map(np.asarray, params["params"])
  clamped = np.minimum(np.asarray(pos), trained - 1)
  np.testing.assert_allclose(term, _explicit(p, clamped), rtol=1e-4, atol=1e-5)
  for k in range(trained, 12):  # every later position has position n − 1's term, row and column
    np.testing.assert_array_equal(term[:, :, k, :], term[:, :, trained - 1, :])
    np.testing.assert_array_equal(term[:, :, :, k], term[:, :, :, trained - 1])
  if max_len:  # the table's own rows past training would have given other terms
    assert np.abs(term - _explicit(p, np.asarray(pos))).max() > 1e-3
  enc.check(10_000)  # clamp: any position


def test_error_fallback_refuses_positions_past_training_naming_the_field():
  enc = tupe.Encoding(dims=_trained_dims(5), fallback="error")
  enc.check(5)
  with pytest.raises(ConfigError) as err:
    enc.check(6)
  assert err.value.field == "config.encoding.fallback"
  assert "--config.encoding.fallback=clamp" in str(err.value)
  # A longer explicit table does not make its untrained rows positions.
  with pytest.raises(ConfigError, match="config.encoding.fallback"):
    enc.clone(max_len=32).check(6)
  # An explicit table shorter than training: its own field, and the size that works.
  with pytest.raises(ConfigError, match=r"config\.encoding\.max_len.*at least 5"):
    enc.clone(max_len=3).check(5)
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    tupe.Encoding(dims=_trained_dims(0)).check(4)  # 0 rows: training bound unknown
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    enc.clone(max_len=-1).check(4)


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_presets_size_the_table_to_the_training_positions(preset):
  c = helpers.config("tupe", preset)
  s = train.setup(c)
  n = data_lib.total_length(s.task, c.task.train_max_length)  # input + answer, contiguous from 0
  assert (c.encoding.max_len, c.encoding.fallback) == (0, "clamp")
  assert n == s.train_positions() == {"smoke": 12, "default": 32, "paper": 80}[preset]
  q = jnp.zeros((1, 4, c.model.num_heads, c.model.d_model // c.model.num_heads))
  pos = jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: s.model(1).encoding.init(jax.random.PRNGKey(0), q, q, pos, pos,
                                                           0, method="logits"))
  assert shapes["params"]["pos"].shape == (n, c.model.d_model)
  assert data_lib.total_length(s.task, c.eval.max_length) > n  # evaluation goes past them


def test_error_fallback_in_a_run_is_refused_before_any_compute(tmp_path):
  c = helpers.config("tupe", **{"encoding.fallback": "error"})  # smoke: 12 trained, 20 evaluated
  c.workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match=r"config\.encoding\.fallback.*at most 12 tokens"):
    train.train_and_evaluate(c, log=lambda *_: None)
  assert not os.path.exists(c.workdir)
  train.setup(helpers.config("tupe", **{"encoding.fallback": "error", "eval.max_length": 6}))


def test_smoke_encoder_reports_its_table_and_warm_starts(tmp_path):
  results = helpers.run_smoke(tmp_path, "tupe")
  helpers.check_smoke_results(results)
  assert results["mode"] == "encoder"
  # Smoke: training reaches 12 positions (reverse_string, length 6: input + answer).
  assert results["encoding_report"] == {"table_rows": 12.0, "trained_rows": 12.0,
                                        "train_positions": 12.0, "fallback_clamp": 1.0}
  source = str(tmp_path / "tupe-run")
  table = train.load_params(source)[0]["encoding"]["pos"]
  assert table.shape == (12, helpers.config("tupe").model.d_model)
  # Warm start: evaluate the trained run further out; every parameter loads.
  warm = helpers.warm_start_further(tmp_path, "tupe", source, 12)
  assert warm["eval_range"] == [1, 12] and warm["encoding_report"]["trained_rows"] == 12.0


def test_decoder_refused(tmp_path):
  with pytest.raises(ConfigError, match="config.model.causal") as err:
    helpers.run_smoke(tmp_path, "tupe", **{"model.causal": True})
  assert err.value.field == "config.model.causal"
