"""Convolutional position encoding: x + GELU(Conv1d(x)), grouped, causal in a decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import conv
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers

D, L, K, G = 8, 24, 5, 4


def _module(causal, kernel_size=K, groups=G, d=D):
  dims = Dims(d_model=d, num_heads=2, num_layers=1, causal=causal, max_position=64)
  return conv.Encoding(dims=dims, kernel_size=kernel_size, groups=groups)


X = jax.random.normal(jax.random.PRNGKey(1), (2, L, D))
POS = jnp.arange(L, dtype=jnp.int32)[None]


def _apply(m, x, seed=0):
  params = m.init(jax.random.PRNGKey(seed), x, POS, method="embed")
  return m.apply(params, x, POS, method="embed"), params


def test_padding_conventions():
  assert conv.padding(5, causal=True) == (4, 0)
  assert conv.padding(5, causal=False) == (2, 2)
  assert conv.padding(4, causal=False) == (2, 1)  # wav2vec 2.0's SamePad: pad k/2, drop the last


@pytest.mark.parametrize("causal", [False, True])
def test_matches_an_explicit_grouped_convolution(causal):
  out, params = _apply(_module(causal), X)
  w = np.asarray(params["params"]["kernel"], np.float64)  # [K, D/G, D]
  bias = np.asarray(params["params"]["bias"], np.float64)
  left, _ = conv.padding(K, causal)
  x = np.asarray(X, np.float64)
  per = D // G
  want = np.zeros_like(x)
  for t in range(L):
    for o in range(D):
      g = o // per  # output channel o reads input channels of its group only
      acc = bias[o]
      for i in range(K):
        s = t + i - left
        if 0 <= s < L:
          acc += x[:, s, g * per:(g + 1) * per] @ w[i, :, o]
      want[:, t, o] = acc
  gelu = 0.5 * want * (1 + jax.scipy.special.erf(want / np.sqrt(2)))
  np.testing.assert_allclose(out, x + np.asarray(gelu), atol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
def test_shift_equivariant_away_from_the_borders(causal):
  m = _module(causal)
  shift = 3
  out, params = _apply(m, X)
  moved = jnp.roll(X, shift, axis=1)
  out_moved = m.apply(params, moved, POS, method="embed")
  # Windows that touch neither the borders nor the wrapped-around part agree after the shift.
  inner = slice(shift + K, L - K)
  np.testing.assert_allclose(out_moved[:, inner], jnp.roll(out, shift, axis=1)[:, inner], atol=1e-5)
  # At the left border the zero padding makes the encoding absolute: equivariance breaks there.
  assert not np.allclose(out_moved[:, shift], out[:, 0], atol=1e-4)


def test_causal_in_a_decoder_and_two_sided_in_an_encoder():
  t = 10
  changed = X.at[:, t + 1:].set(5.0)
  dec = _module(causal=True)
  out, params = _apply(dec, X)
  out2 = dec.apply(params, changed, POS, method="embed")
  np.testing.assert_allclose(out2[:, :t + 1], out[:, :t + 1], atol=1e-6)  # nothing from the future
  assert not np.allclose(out2[:, t + 1], out[:, t + 1])
  enc = _module(causal=False)
  out, params = _apply(enc, X)
  out2 = enc.apply(params, changed, POS, method="embed")
  assert not np.allclose(out2[:, t], out[:, t])  # the encoder looks right too


@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_reaches_a_real_token(causal):
  """Evaluation pads each sequence to its bucket's length with PAD tokens: the real tokens'
  logits are those of the unpadded sequence, however much padding follows (the encoder's last
  tokens used to read PAD embeddings, so scores depended on the bucket)."""
  from posenc.model import ModelConfig, Transformer
  cfg = ModelConfig(vocab_size=9, output_vocab_size=3, d_model=D, num_heads=2, num_layers=1,
                    d_ff=16, dropout=0.0, causal=causal)
  model = Transformer(cfg, _module(causal))
  n = 11
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, n), 3, 9)
  variables = model.init(jax.random.PRNGKey(3), tokens, POS[:, :n], jnp.ones((2, n), bool))
  alone = model.apply(variables, tokens, POS[:, :n], jnp.ones((2, n), bool))
  for pad in (1, 2, 13):
    padded = jnp.pad(tokens, ((0, 0), (0, pad)))  # PAD = 0, a learned embedding like any token
    valid = jnp.broadcast_to(jnp.arange(n + pad) < n, (2, n + pad))
    got = model.apply(variables, padded, POS[:, :n + pad], valid)[:, :n]
    np.testing.assert_allclose(got, alone, atol=1e-5, err_msg=f"{pad} PAD slots")


def test_bad_groups_and_kernel_are_refused():
  with pytest.raises(ConfigError, match="config.encoding.groups"):
    _module(False, groups=3).check(10)
  with pytest.raises(ConfigError, match="config.encoding.kernel_size"):
    _module(False, kernel_size=0).check(10)


@pytest.mark.parametrize("causal", [False, True])
def test_smoke_run(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "conv", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
