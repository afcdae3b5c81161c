"""Stick-breaking attention: hand-computed weights, the official reference restated in NumPy,
a decoding step, finite gradients, decoder only.

Reference (restated in NumPy below): ``shawntan/stickbreaking-attention``,
``stickbreaking_attention/sb_ref.py`` (``stickbreaking(q, k, v, mask, cum_weight)``) and
``tests/test_attn.py`` (``ref_fwd``: ``cm = tril(ones, −1)``; ``mask = triu(ones, 0)``, or
``triu(ones, 1)`` with ``attend_current``; ``o + rem[..., None] * v``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import stickbreaking as sb
from posenc.errors import ConfigError
from tests import helpers


def _logsigmoid(x):
  return -np.logaddexp(0.0, -x)


def _official(q, k, v, attend_current=False):
  """``ref_fwd`` of the official test, in NumPy: q, k, v [B, H, T, D] -> o [B, H, T, D]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  t = q.shape[2]
  cm = np.tril(np.ones((t, t)), -1)
  mask = np.triu(np.ones((t, t)), 1 if attend_current else 0).astype(bool)
  logits = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
  log_z = np.where(mask, -1e5, _logsigmoid(logits))
  log_beta = np.where(mask, 0.0, _logsigmoid(-logits))
  re_cum_log_beta = np.einsum("bhij,jk->bhik", log_beta, cm)
  att = np.exp(log_z + re_cum_log_beta)
  o, rem = att @ v, 1 - att.sum(-1)
  return o + rem[..., None] * v


def test_weights_by_hand():
  """Query 2 over keys 0, 1: β_21 = 3/4 is taken first, β_20 = 1/2 of the rest, 1/8 left over."""
  z = jnp.full((1, 1, 3, 3), 7.0).at[0, 0, 2, :].set(jnp.array([0.0, math.log(3.0), 5.0]))
  causal = jnp.tril(jnp.ones((3, 3), bool))
  w = np.asarray(sb.weights(z, causal, remainder=False))[0, 0]
  np.testing.assert_allclose(w[2], [0.125, 0.75, 0.0], rtol=1e-6)
  np.testing.assert_allclose(w[0], [0.0, 0.0, 0.0])  # the first token has no key before it
  w = np.asarray(sb.weights(z, causal))[0, 0]  # the remainder goes to the query itself
  np.testing.assert_allclose(w[2], [0.125, 0.75, 0.125], rtol=1e-6)
  np.testing.assert_allclose(w[0], [1.0, 0.0, 0.0])
  # attend_current: the query's own key (z = 5) is the first stick.
  w = np.asarray(sb.weights(z, causal, attend_current=True, remainder=False))[0, 0]
  b22 = 1 / (1 + math.exp(-5.0))
  np.testing.assert_allclose(w[2], [0.5 * 0.25 * (1 - b22), 0.75 * (1 - b22), b22], rtol=1e-6)


@pytest.mark.parametrize("attend_current", [False, True])
def test_attention_equals_the_official_reference(attend_current):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  shape = (2, 9, 3, 4)  # [B, T, H, D]
  # As the official test: q shifted up, k down, so many β are far from 1/2.
  q = 0.25 * (jax.random.normal(keys[0], shape) + 1) * 4
  k = 0.25 * (jax.random.normal(keys[1], shape) - 1) * 4
  v = jax.random.normal(keys[2], shape)
  causal = jnp.tril(jnp.ones((9, 9), bool))[None, None]
  o, w = sb.stickbreaking_attention(q, k, v, causal, attend_current=attend_current)
  heads_first = lambda a: np.moveaxis(np.asarray(a), 2, 1)
  want = _official(heads_first(q), heads_first(k), heads_first(v), attend_current)
  np.testing.assert_allclose(heads_first(o), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-5)  # with the remainder
  assert np.all(np.asarray(w)[..., ~np.tril(np.ones((9, 9), bool))] == 0)


def test_without_remainder_rows_sum_to_at_most_one():
  z = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (2, 2, 8, 8))
  w = np.asarray(sb.weights(z, jnp.tril(jnp.ones((8, 8), bool)), remainder=False))
  assert np.all(w >= 0) and np.all(w.sum(-1) <= 1 + 1e-6)


def test_a_decoding_step_gets_the_full_pass_row():
  """Query at slot 5 of a padded buffer (keys after it masked): row 5 of the full pass."""
  keys = jax.random.split(jax.random.PRNGKey(2), 3)
  q, k, v = (jax.random.normal(kk, (2, 8, 2, 4)) for kk in keys)
  valid = jnp.array([[True] * 8, [True] * 6 + [False] * 2])[:, None, None, :]
  o_full, _ = sb.stickbreaking_attention(q, k, v, valid & jnp.tril(jnp.ones((8, 8), bool)))
  o_step, _ = sb.stickbreaking_attention(q[:, 5:6], k, v, valid & (jnp.arange(8) <= 5))
  np.testing.assert_allclose(o_step[:, 0], o_full[:, 5], rtol=1e-5, atol=1e-6)


def test_gradients_are_finite_at_saturated_logits():
  z0 = jnp.array([[[[100.0, -100.0, 60.0, -60.0]] * 4]])
  causal = jnp.tril(jnp.ones((4, 4), bool))
  g = jax.grad(lambda z: jnp.sum(sb.weights(z, causal) * jnp.arange(4.0)))(z0)
  assert bool(jnp.all(jnp.isfinite(g)))


def test_encoder_mode_is_refused(tmp_path):
  with pytest.raises(ConfigError) as e:
    helpers.run_smoke(tmp_path, "stickbreaking", **{"model.causal": False})
  assert e.value.field == "config.model.causal"


def test_smoke_decoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "stickbreaking", **{"encoding.attend_current": True})
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"
