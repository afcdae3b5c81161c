"""Recurrent encodings (Su, kexue.fm/archives/8130): p_{k+1} = f(p_k), and an RNN in front."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import recurrent, sinusoidal
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _module(form="iterate", d=16, max_position=40, causal=False, **kw):
  dims = Dims(d_model=d, num_heads=2, num_layers=1, causal=causal, max_position=max_position)
  return recurrent.Encoding(dims=dims, form=form, **kw)


def _init(module, length=8):
  x = jnp.zeros((1, length, module.dims.d_model))
  pos = jnp.arange(length, dtype=jnp.int32)[None]
  return module.init(jax.random.PRNGKey(0), x, pos, method="embed")


def test_iterating_the_sinusoid_rotation_reproduces_the_table():
  d = 32
  rotate = sinusoidal.rotation(1.0, d)
  rows = recurrent.iterate(lambda p: rotate @ p, sinusoidal.table(jnp.zeros(()), d), 200)
  assert rows.shape == (200, d) and rows.dtype == jnp.float32
  # float32 accuracy: 200 products with a rotation accumulate ~1e-5 of rounding.
  np.testing.assert_allclose(rows, sinusoidal.table(jnp.arange(200), d), atol=5e-5)


def test_iterate_applies_f_k_times():
  rows = recurrent.iterate(lambda p: 2.0 * p + 1.0, jnp.array([0.0]), 5)
  np.testing.assert_array_equal(rows[:, 0], [0.0, 1.0, 3.0, 7.0, 15.0])


def test_module_starts_as_the_sinusoidal_encoding():
  m = _module(max_position=120)
  params = _init(m)
  pos = jnp.array([[0, 3, 50, 119]], jnp.int32)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 16))
  got = m.apply(params, x, pos, method="embed")
  np.testing.assert_allclose(got - x, sinusoidal.table(pos, 16), atol=2e-5)


def _random_params(params, key, scale=0.5):
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_trained_steps_stay_bounded_and_extrapolate_by_iterating_further():
  short, long = _module(max_position=30), _module(max_position=1000)
  params = _random_params(_init(short), jax.random.PRNGKey(2))
  t_short = short.apply(params, method=lambda m: m.table)
  t_long = long.apply(params, method=lambda m: m.table)
  assert t_long.shape == (1000, 16)
  np.testing.assert_allclose(t_long[:30], t_short, rtol=1e-6, atol=1e-6)  # prefix of a longer run
  norms = np.linalg.norm(np.asarray(t_long), axis=-1)
  np.testing.assert_allclose(norms, norms[0], rtol=1e-4)  # norm-preserving f: every p_k as p_0
  assert np.all(np.isfinite(t_long))


def test_linear_part_is_a_rotation_so_far_positions_do_not_collapse():
  m = _module(max_position=1000)
  params = _random_params(_init(m), jax.random.PRNGKey(4))
  params["params"]["W2"] = jnp.zeros_like(params["params"]["W2"])  # linear step: p_k = A^k p_0
  table = np.asarray(m.apply(params, method=lambda m: m.table), np.float64)
  a = np.asarray(recurrent.rotation_from_generator(params["params"]["S"]), np.float64)
  np.testing.assert_allclose(a @ a.T, np.eye(16), atol=1e-5)
  np.testing.assert_allclose(table[500], np.linalg.matrix_power(a, 500) @ table[0], atol=1e-3)
  # A general matrix under the normalisation would be the power method and converge to one
  # vector; the rotation keeps moving as much at position 999 as at position 1.
  steps = np.linalg.norm(np.diff(table, axis=0), axis=-1)
  np.testing.assert_allclose(steps[-1], steps[0], rtol=0.5)
  assert steps.min() > 1e-2


def test_gather_per_example_positions_shared_and_batched():
  m = _module(max_position=64)
  params = _random_params(_init(m), jax.random.PRNGKey(3))
  table = m.apply(params, method=lambda m: m.table)
  pos = jnp.array([[0, 5, 9], [40, 41, 63]], jnp.int32)
  x = jnp.zeros((2, 3, 16))
  np.testing.assert_allclose(m.apply(params, x, pos, method="embed"), table[pos], atol=1e-6)
  shared = m.apply(params, x, pos[:1], method="embed")
  np.testing.assert_allclose(shared, jnp.broadcast_to(table[pos[:1]], (2, 3, 16)), atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_rnn_form_is_left_to_right_and_ignores_positions(causal):
  m = _module(form="rnn", causal=causal)
  params = _init(m, length=10)
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 10, 16))
  pos = jnp.arange(10, dtype=jnp.int32)[None]
  out = m.apply(params, x, pos, method="embed")
  shuffled = jnp.array([[3, 9, 11, 20, 21, 40, 41, 50, 60, 99]], jnp.int32)
  np.testing.assert_array_equal(out, m.apply(params, x, shuffled, method="embed"))
  changed = x.at[:, 6:].set(7.0)
  out2 = m.apply(params, changed, pos, method="embed")
  np.testing.assert_allclose(out2[:, :6], out[:, :6], atol=1e-6)   # earlier tokens unaffected
  assert not np.allclose(out2[:, 6:], out[:, 6:])
  # Order matters: the same token at two places gets two encodings.
  same = jnp.broadcast_to(x[:, :1], x.shape)
  enc = m.apply(params, same, pos, method="embed")
  assert float(jnp.max(jnp.abs(enc[:, 0] - enc[:, 5]))) > 1e-3
  # residual=False is the GRU's output alone (Neishi & Yoshinaga 2019), bounded by tanh.
  plain = _module(form="rnn", causal=causal, residual=False)
  gru = plain.apply(params, x, pos, method="embed")
  np.testing.assert_allclose(out, x + gru, atol=1e-6)
  assert float(jnp.max(jnp.abs(gru))) <= 1.0


@pytest.mark.parametrize("form", ["rnn", "iterate"])
def test_padding_never_reaches_a_real_token(form):
  """An encoder's rows padded to any bucket length (PAD tokens after the real ones) give the
  real tokens the logits of the unpadded row: the GRU reads left to right, so the PAD tail
  comes after every real token; the iterated table is read at the real positions."""
  from posenc.model import ModelConfig, Transformer
  cfg = ModelConfig(vocab_size=9, output_vocab_size=3, d_model=16, num_heads=2, num_layers=1,
                    d_ff=16, dropout=0.0, causal=False)
  model = Transformer(cfg, _module(form=form, causal=False))
  n = 9
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, n), 3, 9)
  pos = jnp.arange(n + 13, dtype=jnp.int32)[None]
  variables = model.init(jax.random.PRNGKey(3), tokens, pos[:, :n], jnp.ones((2, n), bool))
  alone = model.apply(variables, tokens, pos[:, :n], jnp.ones((2, n), bool))
  for pad in (1, 13):
    padded = jnp.pad(tokens, ((0, 0), (0, pad)))  # PAD = 0
    valid = jnp.broadcast_to(jnp.arange(n + pad) < n, (2, n + pad))
    got = model.apply(variables, padded, pos[:, :n + pad], valid)[:, :n]
    np.testing.assert_allclose(got, alone, atol=1e-5, err_msg=f"{pad} PAD slots")


def test_bad_form_is_refused():
  with pytest.raises(ConfigError, match="config.encoding.form"):
    _module(form="lstm").check(10)


@pytest.mark.parametrize("form,causal", [("iterate", False), ("iterate", True),
                                         ("rnn", False), ("rnn", True)])
def test_smoke_run(tmp_path, form, causal):
  results = helpers.run_smoke(tmp_path, "recurrent", **{"model.causal": causal,
                                                        "encoding.form": form})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
