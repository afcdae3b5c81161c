"""T5 relative bias: the bucket function against an independent re-statement of
HF/mesh-tensorflow's formula and hand values, one table shared by all layers,
bidirectional in the encoder and causal in the decoder, smoke runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import t5
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _reference_bucket(relative_position: int, bidirectional: bool = True, num_buckets: int = 32,
                      max_distance: int = 128) -> int:
  """HF transformers ``T5Attention._relative_position_bucket`` (from mesh-tensorflow
  ``_relative_position_bucket``), restated in plain Python floats; relative_position = j − i."""
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    if relative_position > 0:
      bucket += num_buckets
    n = abs(relative_position)
  else:
    n = -min(relative_position, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return bucket + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return bucket + min(large, num_buckets - 1)


DISTANCES = list(range(-300, 301)) + [-100000, -5000, -1000, -129, 129, 1000, 5000, 100000]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (64, 256), (16, 40)])
def test_bucket_matches_reference(bidirectional, num_buckets, max_distance):
  got = np.asarray(t5.relative_position_bucket(jnp.array(DISTANCES), bidirectional,
                                               num_buckets, max_distance))
  want = [_reference_bucket(r, bidirectional, num_buckets, max_distance) for r in DISTANCES]
  np.testing.assert_array_equal(got, want)


def test_bucket_hand_values():
  # relative_position = j − i. Bidirectional (32, 128): 16 buckets a side, keys after the
  # query (j > i) get +16; exact below 8, then 8 + int(log(n/8)/log(16)·8), capped at 15.
  #   n=15: 8 + int(0.2267·8 = 1.81) = 9;   n=16: 8 + int(0.25·8 = 2.0) = 10;
  #   n=20: 8 + int(0.3305·8 = 2.64) = 10;  n=127: 8 + int(7.98) = 15;  n>=128: 15.
  bi = {0: 0, -1: 1, 1: 17, -7: 7, -8: 8, -15: 9, -16: 10, -20: 10, 20: 26,
        -127: 15, -128: 15, -1000: 15, 127: 31, 1000: 31}
  # Unidirectional (decoder): 32 buckets for i − j >= 0, exact below 16,
  #   n=20: 16 + int(log(1.25)/log(8)·16 = 1.72) = 17;  n=127: 16 + int(15.94) = 31.
  uni = {0: 0, -1: 1, 1: 0, 20: 0, -15: 15, -16: 16, -20: 17, -127: 31, -1000: 31}
  for table, bidirectional in ((bi, True), (uni, False)):
    rel = jnp.array(list(table))
    got = t5.relative_position_bucket(rel, bidirectional=bidirectional)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, list(table.values()))


def _enc(layers=1, causal=False):
  return t5.Encoding(dims=Dims(d_model=8, num_heads=2, num_layers=layers, causal=causal,
                               max_position=64))


@pytest.mark.parametrize("causal", [False, True])
def test_term_is_table_lookup_broadcast_over_batch(causal):
  enc = _enc(causal=causal)
  q = jnp.zeros((3, 6, 2, 4))
  pos = jnp.array([[0, 1, 2, 5, 30, 31]])
  params = enc.init(jax.random.PRNGKey(0), q, q, pos, pos, 0, method="logits")
  table = np.asarray(params["params"]["relative_attention_bias"])
  term = enc.apply(params, q, q, pos, pos, 0, method="logits")
  assert term.shape == (1, 2, 6, 6)  # positions [1, L] -> batch-free term
  p = np.asarray(pos[0])
  for i in range(6):
    for j in range(6):
      bucket = _reference_bucket(int(p[j] - p[i]), bidirectional=not causal)
      np.testing.assert_allclose(term[0, :, i, j], table[bucket], rtol=1e-6)
  # Per-example positions give a per-example term; shifting positions changes nothing.
  pos_b = jnp.concatenate([pos, pos + 7, pos + 100])
  term_b = enc.apply(params, q, q, pos_b, pos_b, 0, method="logits")
  assert term_b.shape == (3, 2, 6, 6)
  np.testing.assert_allclose(term_b, jnp.broadcast_to(term, term_b.shape), rtol=1e-6)


def test_encoder_buckets_are_two_sided_decoder_one_sided():
  pos = jnp.arange(4)[None]
  q = jnp.zeros((1, 4, 2, 4))
  for causal in (False, True):
    enc = _enc(causal=causal)
    params = enc.init(jax.random.PRNGKey(1), q, q, pos, pos, 0, method="logits")
    term = np.asarray(enc.apply(params, q, q, pos, pos, 0, method="logits"))[0, 0]
    # Distances +1 (key after query) and −1 differ in the encoder; the decoder's future
    # keys all share bucket 0 (the same as distance 0), and are masked by the model anyway.
    if causal:
      assert term[0, 1] == term[0, 0] and term[1, 0] != term[0, 1]
    else:
      assert term[0, 1] != term[1, 0] and term[0, 1] == term[1, 2]


def test_one_table_shared_by_all_layers():
  q = jnp.zeros((1, 3, 2, 4))
  pos = jnp.arange(3)[None]
  trees = []
  for layers in (1, 4):
    enc = _enc(layers=layers)
    params = enc.init(jax.random.PRNGKey(0), q, q, pos, pos, 0, method="logits")
    trees.append(jax.tree_util.tree_map(jnp.shape, params["params"]))
    terms = [enc.apply(params, q, q, pos, pos, l, method="logits") for l in range(layers)]
    assert all(np.array_equal(terms[0], t) for t in terms)
  assert trees[0] == trees[1] == {"relative_attention_bias": (32, 2)}


def test_check_refuses_bad_buckets():
  with pytest.raises(ConfigError, match="config.encoding.num_buckets"):
    t5.Encoding(dims=_enc().dims, num_buckets=3).check(10)
  with pytest.raises(ConfigError, match="config.encoding.max_distance"):
    t5.Encoding(dims=_enc().dims, max_distance=8).check(10)


@pytest.mark.parametrize("causal", [False, True])
def test_smoke(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "t5", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")


def test_qk_scaling_option():
  from posenc import encodings
  assert encodings.default_config("t5").qk_scaling == "sqrt"
  dims = Dims(d_model=32, num_heads=2, num_layers=1, causal=False, max_position=64)  # d_h = 16
  assert t5.Encoding(dims=dims).content_scale() == 1.0
  assert t5.Encoding(dims=dims, qk_scaling="none").content_scale() == pytest.approx(4.0)
  with pytest.raises(ConfigError, match="config.encoding.qk_scaling"):
    t5.Encoding(dims=dims, qk_scaling="half").check(10)


def test_unscaled_logits_in_the_model():
  """With ``qk_scaling="none"`` the model's pre-softmax logits are ``q·k + b``: with the same
  parameters they are ``sqrt(d_h)`` times the default's content logits, plus the same bias."""
  from posenc.model import ModelConfig, Transformer
  cfg = ModelConfig(vocab_size=5, output_vocab_size=5, d_model=32, num_heads=2, num_layers=1,
                    d_ff=16, dropout=0.0)
  dims = Dims(d_model=32, num_heads=2, num_layers=1, causal=False, max_position=64)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 7), 0, 5)
  pos, valid = jnp.arange(7)[None], jnp.ones((2, 7), bool)

  def log_weights(params, qk_scaling):
    model = Transformer(cfg, t5.Encoding(dims=dims, qk_scaling=qk_scaling), capture_attention=True)
    _, state = model.apply(params, tokens, pos, valid, mutable=["intermediates"])
    return np.log(np.asarray(state["intermediates"]["attention_0"][0], np.float64))

  model = Transformer(cfg, t5.Encoding(dims=dims), capture_attention=True)
  params = model.init(jax.random.PRNGKey(1), tokens, pos, valid)
  table = params["params"]["encoding"]["relative_attention_bias"]
  # Bias zero: log-softmax rows of sqrt(d_h)·s and of s differ by a per-row constant only.
  zero = jax.tree_util.tree_map(lambda x: x, params)
  zero["params"]["encoding"]["relative_attention_bias"] = jnp.zeros_like(table)
  diff = log_weights(zero, "none") - 4.0 * log_weights(zero, "sqrt")
  np.testing.assert_allclose(diff - diff[..., :1], 0.0, atol=1e-4)
  assert np.ptp(log_weights(zero, "none") - log_weights(zero, "sqrt"), axis=-1).max() > 1e-2
  # Content zero (query kernel zeroed): both are softmax(b), the bias unscaled in either.
  no_content = jax.tree_util.tree_map(lambda x: x, params)
  no_content["params"]["layer0_query"] = jax.tree_util.tree_map(
      jnp.zeros_like, params["params"]["layer0_query"])
  np.testing.assert_allclose(log_weights(no_content, "none"), log_weights(no_content, "sqrt"),
                             atol=1e-5)


def test_smoke_unscaled(tmp_path):
  results = helpers.run_smoke(tmp_path, "t5", **{"encoding.qk_scaling": "none"})
  helpers.check_smoke_results(results)
