"""RoPE: rotation properties, pairings, context-extension formulas, end to end."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import train
from posenc.encodings import rope
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _rand(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _dims(max_position, train_length=12, d_model=32, heads=2, causal=False):
  return Dims(d_model=d_model, num_heads=heads, num_layers=1, causal=causal,
              max_position=max_position, train_length=train_length)


def test_frequencies():
  np.testing.assert_allclose(rope.frequencies(8), [1.0, 0.1, 0.01, 0.001], rtol=1e-6)
  np.testing.assert_allclose(rope.frequencies(4, base=100.0), [1.0, 0.1], rtol=1e-6)


def test_rotation_of_one_pair():
  # d = 2, x = (1, 0) at position 3 turns to (cos 3, sin 3).
  out = rope.rotate(jnp.array([[1.0, 0.0]]), jnp.array([3]))
  np.testing.assert_allclose(out, [[math.cos(3.0), math.sin(3.0)]], atol=1e-6)


def test_dot_product_depends_only_on_offset():
  q, k = _rand((16,), 1), _rand((16,), 2)
  dot = lambda a, b: float(rope.rotate(q[None], jnp.array([a]))[0] @ rope.rotate(k[None], jnp.array([b]))[0])
  ref = dot(3, 1)
  for a, b in [(10, 8), (2, 0), (1000, 998), (12345, 12343)]:
    assert dot(a, b) == pytest.approx(ref, abs=2e-4)
  assert abs(dot(4, 1) - ref) > 1e-2  # a different offset gives a different score


def test_norms_preserved():
  x = _rand((3, 7, 16))
  pos = jnp.arange(7)[None] * 37
  for pairing in rope.PAIRINGS:
    out = rope.rotate(x, pos, pairing=pairing)
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_half_split_is_interleaved_up_to_a_permutation():
  d = 12
  x = _rand((5, d))
  pos = jnp.arange(5) * 3
  # Interleaved pair m = channels (2m, 2m+1); half-split pair m = channels (m, m + d/2).
  perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
  inter = rope.rotate(x, pos, pairing="interleaved")
  half = rope.rotate(x[:, perm], pos, pairing="half")
  np.testing.assert_allclose(half, inter[:, perm], atol=1e-6)
  assert not np.allclose(rope.rotate(x, pos, pairing="half"), inter, atol=1e-3)


def test_hook_rotates_q_and_k_per_head_and_leaves_v():
  dims = _dims(max_position=8)
  enc = rope.Encoding(dims=dims)
  q, k, v = _rand((3, 8, 2, 16), 1), _rand((3, 8, 2, 16), 2), _rand((3, 8, 2, 16), 3)
  pos = jnp.arange(8)[None] + 5  # shared by the batch
  qo, ko, vo = enc.project(q, k, v, pos, pos, 0)
  np.testing.assert_array_equal(vo, v)
  for h in range(2):
    np.testing.assert_allclose(qo[:, :, h], rope.rotate(q[:, :, h], pos), atol=1e-6)
    np.testing.assert_allclose(ko[:, :, h], rope.rotate(k[:, :, h], pos), atol=1e-6)


# ----------------------------------------------------------------- context extension

def _yarn_reference(dim, base, s, L, beta_fast=32, beta_slow=1):
  """The YaRN formula restated from jquesnelle/yarn scaled_rope/LlamaYaRNScaledRotaryEmbedding.py
  and HF transformers modeling_rope_utils._compute_yarn_parameters, in plain Python."""
  def corr(rot):
    return dim * math.log(L / (rot * 2 * math.pi)) / (2 * math.log(base))
  low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), dim - 1)
  if low == high:
    high += 0.001
  out = []
  for m in range(dim // 2):
    pos_freq = base ** (2 * m / dim)
    extrapolation = 1 - min(max((m - low) / (high - low), 0.0), 1.0)  # "inv_freq_mask"
    out.append(1 / (s * pos_freq) * (1 - extrapolation) + 1 / pos_freq * extrapolation)
  return np.array(out), 0.1 * math.log(s) + 1


def test_yarn_reference_numbers():
  # Llama-like head: d = 128, base 10000, s = 8, original length 4096.
  assert rope.yarn_correction_range(128, 10000.0, 4096) == (20.0, 46.0)
  inv, attn = rope.scaled_frequencies(128, scaling="yarn", factor=8.0, original_length=4096)
  ref, ref_attn = _yarn_reference(128, 10000.0, 8.0, 4096)
  np.testing.assert_allclose(inv, ref, rtol=2e-6)
  assert attn == pytest.approx(ref_attn) == pytest.approx(1.2079441541679836)
  # Hand-checked entries: pairs <= 20 keep θ, pairs >= 46 get θ/8, in between a ramp.
  for m, value in [(0, 1.0), (20, 0.05623413251903491), (21, 0.0470579194992012),
                   (33, 0.0048710493189003685), (46, 0.0001666901790204155),
                   (63, 1.4434774808618228e-05)]:
    assert float(inv[m]) == pytest.approx(value, rel=2e-6)
  # A small head (the smoke model: d_h = 8, L = 12) clamps the range to (0, 1).
  inv8, _ = rope.scaled_frequencies(8, scaling="yarn", factor=4.0, original_length=12)
  np.testing.assert_allclose(inv8, _yarn_reference(8, 10000.0, 4.0, 12)[0], rtol=2e-6)


def test_linear_is_position_interpolation():
  x = _rand((6, 16))
  pos = jnp.arange(6) * 5
  inv, attn = rope.scaled_frequencies(16, scaling="linear", factor=4.0)
  assert attn == 1.0
  np.testing.assert_allclose(rope.rotate(x, pos, inv_freq=inv), rope.rotate(x, pos / 4.0), atol=1e-5)


def test_ntk_rescales_the_base():
  d, s = 16, 4.0
  inv, _ = rope.scaled_frequencies(d, scaling="ntk", factor=s)
  np.testing.assert_allclose(inv, rope.frequencies(d, 10000.0 * s ** (d / (d - 2))), rtol=1e-6)
  assert float(inv[0]) == 1.0  # the fastest pair is kept
  assert float(inv[-1]) == pytest.approx(float(rope.frequencies(d)[-1]) / s, rel=1e-5)  # the slowest / s


def test_dynamic_ntk_reference():
  # HF _compute_dynamic_ntk_parameters restated: base·(α·L'/L − (α − 1))^{d/(d−2)}, L' = max(L', L).
  d, L = 128, 4096
  for factor, length in [(2.0, 8192), (1.0, 6000), (2.0, 1000)]:
    cur = max(length, L)
    new_base = 10000.0 * (factor * cur / L - (factor - 1)) ** (d / (d - 2))
    ref = [new_base ** (-2 * m / d) for m in range(d // 2)]
    got = rope.dynamic_ntk_frequencies(d, jnp.array(length), original_length=L, factor=factor)
    np.testing.assert_allclose(got, ref, rtol=2e-5)
  got = rope.dynamic_ntk_frequencies(d, jnp.array(8192), original_length=L, factor=2.0)
  assert float(got[1]) == pytest.approx(0.8509942913412162, rel=1e-5)  # base' = 30527.74


def _project_q(enc, x, length):
  pos = jnp.arange(length)[None]
  return jax.jit(lambda x_: enc.project(x_, x_, x_, pos, pos, 0)[0])(x[:, :length])


def _want(scaling, x, length, s):
  """``x [B, P, H, d]`` rotated at ``arange(P)`` with the rule's frequencies for factor ``s``."""
  d = x.shape[-1]
  scaling = scaling.removesuffix(rope.PER_SEQUENCE)
  if scaling == "dynamic_ntk":
    theta, scale = rope.dynamic_ntk_frequencies(d, jnp.array(s * 12.0), original_length=12), 1.0
  else:
    theta, scale = rope.scaled_frequencies(d, scaling=scaling, factor=s, original_length=12)
  return rope.rotate(x[:, :length, 0], jnp.arange(length)[None], inv_freq=theta, scale=scale)


PER_SEQUENCE_RULES = ["linear_per_sequence", "ntk_per_sequence", "yarn_per_sequence", "dynamic_ntk"]


@pytest.mark.parametrize("scaling", PER_SEQUENCE_RULES)
def test_scaling_applies_only_beyond_the_training_length(scaling):
  x = _rand((1, 96, 2, 16))
  # A sequence of the training length L = 12 is rotated exactly as in training, in any program.
  for bound in (16, 96):
    np.testing.assert_array_equal(
        _project_q(rope.Encoding(dims=_dims(bound), scaling=scaling), x, 12),
        _project_q(rope.Encoding(dims=_dims(bound)), x, 12))
  # 96 tokens, 8x: s = 96 / 12 = 8.
  got = _project_q(rope.Encoding(dims=_dims(96), scaling=scaling), x, 96)
  np.testing.assert_allclose(got[:, :, 0], _want(scaling, x, 96, 8.0), atol=1e-5)
  assert not np.allclose(got, _project_q(rope.Encoding(dims=_dims(96)), x, 96), atol=1e-3)


@pytest.mark.parametrize("scaling", PER_SEQUENCE_RULES)
def test_each_sequence_is_scaled_by_its_own_length_not_its_padding(scaling):
  """Evaluation pads a bucket's rows to its longest length: a row of 9 tokens (in range) and
  one of 18 (s = 1.5) are scaled by their own lengths, whatever the padding and the program's
  bound (it used to be s = bound / 12 for every row of the program)."""
  x = _rand((2, 96, 2, 16))
  lengths = jnp.array([9, 18])
  for padded in (18, 24, 96):
    enc = rope.Encoding(dims=_dims(padded), scaling=scaling)
    pos = jnp.arange(padded)[None]
    valid = jnp.arange(padded)[None] < lengths[:, None]
    xs = x[:, :padded]
    q = jax.jit(lambda x_, p=pos, v=valid, e=enc: e.project(x_, x_, x_, p, p, 0, context=p,
                                                          valid=v)[0])(xs)
    np.testing.assert_array_equal(q[0, :9], _project_q(rope.Encoding(dims=_dims(16)), x, 9)[0])
    np.testing.assert_allclose(q[1:, :18, 0], _want(scaling, x[1:], 18, 1.5), atol=1e-5)
  # Padding slots hold any positions (randomized sampling puts 0 there): they never count.
  enc = rope.Encoding(dims=_dims(96), scaling=scaling)
  pos = jnp.where(jnp.arange(24) < 18, jnp.arange(24), 90)[None]
  valid = (jnp.arange(24) < 18)[None]
  q = enc.project(x[1:, :24], x[1:, :24], x[1:, :24], pos, pos, 0, context=pos, valid=valid)[0]
  np.testing.assert_allclose(q[:, :18, 0], _want(scaling, x[1:], 18, 1.5), atol=1e-5)


def test_explicit_factor_applies_past_the_training_length_only():
  x = _rand((2, 24, 2, 16))
  enc = rope.Encoding(dims=_dims(96), scaling="linear_per_sequence", factor=4.0)
  pos = jnp.arange(24)[None]
  valid = jnp.arange(24)[None] < jnp.array([[12], [13]])
  q = enc.project(x, x, x, pos, pos, 0, context=pos, valid=valid)[0]
  np.testing.assert_array_equal(q[0, :12], _project_q(rope.Encoding(dims=_dims(16)), x, 12)[0])
  np.testing.assert_allclose(q[1, :13, 0], rope.rotate(x[1, :13, 0], pos[0, :13] / 4.0), atol=1e-5)


def test_yarn_scales_cos_and_sin():
  enc = rope.Encoding(dims=_dims(max_position=96), scaling="yarn_per_sequence")
  x = _rand((1, 96, 2, 16))
  pos = jnp.arange(96)[None]
  q = enc.project(x, x, x, pos, pos, 0)[0]
  np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), (0.1 * math.log(8) + 1) * jnp.linalg.norm(x, axis=-1),
                             rtol=1e-5)


def test_explicit_factor_and_original_length():
  enc = rope.Encoding(dims=_dims(max_position=96), scaling="linear", factor=2.0)
  np.testing.assert_allclose(enc.static_frequencies()[0], rope.frequencies(16) / 2, rtol=1e-6)
  # original_length 64 (e.g. randomized training positions): a 64-position program is not rescaled.
  enc = rope.Encoding(dims=_dims(max_position=64), scaling="linear_per_sequence", original_length=64)
  np.testing.assert_allclose(enc.static_frequencies()[0], rope.frequencies(16), rtol=1e-6)


@pytest.mark.parametrize("field,kwargs", [("config.encoding.scaling", {"scaling": "ntk-aware"}),
                                          ("config.encoding.pairing", {"pairing": "neox"}),
                                          ("config.encoding.factor", {"factor": 0.5})])
def test_bad_options_are_config_errors(field, kwargs):
  with pytest.raises(ConfigError) as e:
    rope.Encoding(dims=_dims(max_position=16), **kwargs).check(16)
  assert e.value.field == field


@pytest.mark.parametrize("scaling", ["dynamic_ntk", "linear_per_sequence"])
def test_decoding_scales_every_step_by_the_sequence_length(scaling, **options):
  """Greedy decoding: the prefill, every step's query and the recomputing decoder all use the
  sequence's L' (prompt plus answer slots), so stepping reproduces the full pass (a step's
  query used to get its own position + 1 as dynamic NTK's length, the cached keys the bucket's)."""
  from posenc import data as data_lib, decoding
  from tests import test_decoding
  s, model, variables, batch, out_len = test_decoding._setup("rope", **{"encoding.scaling": scaling,
                                                                        **options})
  l = int(batch["length"])
  assert l + out_len > s.model(16).encoding._original_length() == 12  # beyond training: scaled
  args = (batch["tokens"], batch["positions"], batch["valid"])

  @jax.jit
  def run(variables):
    full = model.apply(variables, *args)
    _, kv = model.apply(variables, *args, decode="prefill", mutable=["kv"])

    def step(i, carry):
      logits, kv = carry
      token = jax.lax.dynamic_slice_in_dim(batch["tokens"], i, 1, axis=1)
      new, kv = model.apply({**variables, **kv}, token, *args[1:], decode="step", index=i,
                            mutable=["kv"])
      return jax.lax.dynamic_update_slice_in_dim(logits, new, i, axis=1), kv

    stepped, _ = jax.lax.fori_loop(l + 1, l + out_len, step, (jnp.zeros_like(full), kv))
    offset = data_lib.NUM_SPECIAL + s.task.input_vocab_size
    greedy = [decoding.greedy(model, variables, batch, output_offset=offset, answer_length=out_len,
                              use_cache=c) for c in (True, False)]
    return full, stepped, greedy

  full, stepped, (cached, recomputed) = jax.device_get(run(variables))
  answer = slice(l + 1, l + out_len)
  np.testing.assert_allclose(stepped[:, answer], full[:, answer], atol=2e-5, rtol=1e-5)
  np.testing.assert_array_equal(cached, recomputed)


# ----------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  path = tmp_path_factory.mktemp("rope")
  return path, helpers.run_smoke(path, "rope", **{"model.causal": False})


def test_smoke_encoder(trained):
  _, results = trained
  helpers.check_smoke_results(results)
  assert results["mode"] == "encoder"


def test_smoke_decoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "rope", **{"model.causal": True})
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"


def _reevaluate(path, tmp_path, scaling):
  c = helpers.config("rope", **{"init.from_workdir": str(path / "rope-run"), "train.steps": 0,
                                "encoding.scaling": scaling, "eval.max_length": 48})
  c.workdir = str(tmp_path / f"{scaling}-8x")
  return train.train_and_evaluate(c, log=lambda *_: None)


def test_reevaluate_trained_run_at_8x_with_yarn_per_sequence(trained, tmp_path):
  path, _ = trained
  yarn = _reevaluate(path, tmp_path, "yarn_per_sequence")
  helpers.check_smoke_results(yarn)
  assert yarn["eval_range"] == [1, 48] and yarn["steps"] == 0  # 8x the training length of 6
  # The bucket of lengths 1..6 (a 16-position program, as in training) is not rescaled, so
  # there the warm-started model scores exactly as without scaling.
  plain = _reevaluate(path, tmp_path, "none")
  for length in range(1, 7):
    assert yarn["per_length"][str(length)] == pytest.approx(plain["per_length"][str(length)], abs=1e-6)


# ----------------------------------------------------------------- llama3 and longrope (HF names)

def _hf_llama3(dim, base, factor, low_freq_factor, high_freq_factor, old_context_len):
  """HF ``_compute_llama3_parameters`` restated in NumPy (float32, as torch computes it)."""
  inv_freq = (1.0 / base ** (np.arange(0, dim, 2).astype(np.float32) / dim)).astype(np.float32)
  low_freq_wavelen, high_freq_wavelen = old_context_len / low_freq_factor, old_context_len / high_freq_factor
  wavelen = (2 * math.pi / inv_freq).astype(np.float32)
  inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
  smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
  smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
  is_medium_freq = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
  return np.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def test_llama3_reference_numbers():
  # Llama 3.1: rope_theta 500000, head 128, factor 8, low 1, high 4, original 8192.
  got = rope.llama3_frequencies(128, 8.0, base=500000.0, original_length=8192,
                                low_freq_factor=1.0, high_freq_factor=4.0)
  np.testing.assert_allclose(got, _hf_llama3(128, 500000.0, 8.0, 1.0, 4.0, 8192), rtol=1e-6)
  # Pairs 0..28 keep θ (wavelength < 2048), 29..34 are smoothed, 35..63 get θ/8 (> 8192).
  for m, value in [(0, 1.0), (20, 0.016560440883040428), (29, 0.0021665706299245358),
                   # pair 32: θ = 500000^(−1/2), λ = 4442.88, γ = (8192/λ − 1)/3 = 0.28128,
                   # θ·(γ + (1 − γ)/8) = 0.000524846
                   (32, 0.0005248460220173001), (35, 9.556212171446532e-05),
                   (63, 3.068925877869333e-07)]:
    assert float(got[m]) == pytest.approx(value, rel=1e-6)
  # The smoke-sized head (d = 16, L = 32, s = 4) and other low/high factors.
  for low, high in [(1.0, 4.0), (2.0, 8.0)]:
    np.testing.assert_allclose(
        rope.llama3_frequencies(16, 4.0, original_length=32, low_freq_factor=low, high_freq_factor=high),
        _hf_llama3(16, 10000.0, 4.0, low, high, 32), rtol=1e-6)
  # s = 1 is the identity; a traced s per sequence gives one row each.
  np.testing.assert_allclose(rope.llama3_frequencies(16, 1.0, original_length=32),
                             rope.frequencies(16), rtol=1e-6)
  rows = rope.llama3_frequencies(16, jnp.array([1.0, 4.0]), original_length=32)
  np.testing.assert_allclose(rows[1], _hf_llama3(16, 10000.0, 4.0, 1.0, 4.0, 32), rtol=1e-6)
  theta, attn = rope.scaled_frequencies(16, scaling="llama3", factor=4.0, original_length=32)
  assert attn == 1.0
  np.testing.assert_allclose(theta, rows[1], rtol=1e-7)


def test_longrope_reference_numbers():
  # HF _compute_longrope_parameters: inv_freq = 1 / (ext_factors · base^(2m/d)), and the
  # attention factor sqrt(1 + ln(factor) / ln(original_max_position_embeddings)).
  ext = [1.0, 1.5, 4.0, 10.0]
  np.testing.assert_allclose(rope.longrope_frequencies(8, jnp.array(ext)),
                             [1 / (e * 10000.0 ** (2 * m / 8)) for m, e in enumerate(ext)], rtol=1e-6)
  # Phi-3-mini-128k: 131072 / 4096 = 32, ln 32 / ln 4096 = 5/12.
  assert rope.longrope_attention_factor(32.0, 4096) == pytest.approx(math.sqrt(17 / 12))
  assert rope.longrope_attention_factor(32.0, 4096) == pytest.approx(1.1902380714238083)
  assert rope.longrope_attention_factor(1.0, 4096) == 1.0
  np.testing.assert_allclose(rope.longrope_attention_factor(jnp.array([0.5, 32.0]), 4096),
                             [1.0, math.sqrt(17 / 12)], rtol=1e-6)


def test_llama3_per_sequence_scales_only_beyond_the_training_length():
  x = _rand((1, 96, 2, 16))
  plain = lambda n: _project_q(rope.Encoding(dims=_dims(96)), x, n)
  enc = rope.Encoding(dims=_dims(96), scaling="llama3_per_sequence")
  np.testing.assert_array_equal(_project_q(enc, x, 12), plain(12))
  want = rope.rotate(x[:, :96, 0], jnp.arange(96)[None],  # s = 96 / 12, L = 12
                     inv_freq=rope.llama3_frequencies(16, 8.0, original_length=12))
  np.testing.assert_allclose(_project_q(enc, x, 96)[:, :, 0], want, atol=1e-5)
  enc = rope.Encoding(dims=_dims(96), scaling="llama3_per_sequence", factor=2.0, low_freq_factor=2.0,
                      high_freq_factor=3.0)
  want = rope.rotate(x[:, :96, 0], jnp.arange(96)[None], inv_freq=rope.llama3_frequencies(
      16, 2.0, original_length=12, low_freq_factor=2.0, high_freq_factor=3.0))
  np.testing.assert_allclose(_project_q(enc, x, 96)[:, :, 0], want, atol=1e-5)


def test_longrope_short_within_long_beyond_per_sequence():
  """Rows of 9 and 18 tokens (L = 12) in one padded batch: θ/short_factor with scale 1, and
  θ/long_factor with sqrt(1 + ln(18/12)/ln 12); an explicit attention_factor scales both."""
  short, long = (1.0, 1.25, 1.5, 2.0, 1.0, 1.0, 1.0, 1.0), (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 8.0, 8.0)
  x = _rand((2, 24, 2, 16))
  pos = jnp.arange(24)[None]
  valid = jnp.arange(24)[None] < jnp.array([[9], [18]])
  for attention_factor in (0.0, 1.5):
    enc = rope.Encoding(dims=_dims(24), scaling="longrope_per_sequence", short_factor=short, long_factor=long,
                        attention_factor=attention_factor)
    q = enc.project(x, x, x, pos, pos, 0, context=pos, valid=valid)[0]
    scales = ((attention_factor,) * 2 if attention_factor
              else (1.0, math.sqrt(1 + math.log(1.5) / math.log(12))))
    for row, (n, ext, scale) in enumerate([(9, short, scales[0]), (18, long, scales[1])]):
      want = rope.rotate(x[row, :n, 0], pos[0, :n], scale=scale,
                         inv_freq=rope.longrope_frequencies(16, jnp.array(ext)))
      np.testing.assert_allclose(q[row, :n, 0], want, atol=1e-5)


@pytest.mark.parametrize("kwargs,field", [
    ({"scaling": "llama3", "low_freq_factor": 4.0, "high_freq_factor": 4.0},
     "config.encoding.high_freq_factor"),
    ({"scaling": "longrope"}, "config.encoding.long_factor"),
    ({"scaling": "longrope", "long_factor": (1.0, 2.0)}, "config.encoding.long_factor"),
    ({"scaling": "longrope", "long_factor": (1.0,) * 8, "short_factor": (1.0,) * 7 + (0.0,)},
     "config.encoding.short_factor"),
    ({"scaling": "yarn", "attention_factor": -1.0}, "config.encoding.attention_factor")])
def test_llama3_longrope_bad_options_are_config_errors(kwargs, field):
  with pytest.raises(ConfigError) as e:
    rope.Encoding(dims=_dims(max_position=16), **kwargs).check(16)
  assert e.value.field == field


def test_llama3_decoding_scales_every_step_by_the_sequence_length():
  test_decoding_scales_every_step_by_the_sequence_length("llama3_per_sequence")


def test_longrope_smoke_run(tmp_path):
  results = helpers.run_smoke(tmp_path, "rope", **{"model.causal": True, "encoding.scaling": "longrope",
                                                  "encoding.long_factor": (1.0, 2.0, 4.0, 8.0),
                                                  "encoding.factor": 4.0})
  helpers.check_smoke_results(results)


def test_attention_factor_overrides_yarns_scale_beyond_the_training_length():
  x = _rand((1, 96, 2, 16))
  enc = rope.Encoding(dims=_dims(96), scaling="yarn_per_sequence", attention_factor=1.3)
  q = _project_q(enc, x, 96)
  np.testing.assert_allclose(jnp.linalg.norm(q, axis=-1), 1.3 * jnp.linalg.norm(x, axis=-1), rtol=1e-5)
  np.testing.assert_array_equal(_project_q(enc, x, 12), _project_q(rope.Encoding(dims=_dims(96)), x, 12))


# ----------------------------------------------------------------- HF's names compute what HF computes

def _hf_parameters(rule, dim, factor, L, base=10000.0, seq_len=None, **kw):
  """HF ``modeling_rope_utils`` restated in NumPy, independently of posenc: the inverse frequencies
  and the attention factor (the cos/sin scale) of ``rope_type = rule`` with ``rope_scaling``
  ``factor``, ``original_max_position_embeddings = L`` (longrope: ``original_max_position_embeddings``,
  ``max_position_embeddings = factor·L``; ``seq_len``: the current length, which picks its factors)."""
  inv_freq = 1.0 / base ** (np.arange(0, dim, 2) / dim)
  if rule == "linear":  # _compute_linear_scaling_rope_parameters: inv_freq / factor
    return inv_freq / factor, 1.0
  if rule == "ntk":  # _compute_ntk_parameters: the base becomes base·factor^(dim/(dim − 2))
    return 1.0 / (base * factor ** (dim / (dim - 2))) ** (np.arange(0, dim, 2) / dim), 1.0
  if rule == "yarn":  # _compute_yarn_parameters
    inv, attn = _yarn_reference(dim, base, factor, L, kw.get("beta_fast", 32), kw.get("beta_slow", 1))
    return inv, kw.get("attention_factor") or attn
  if rule == "llama3":  # _compute_llama3_parameters
    return _hf_llama3(dim, base, factor, kw.get("low_freq_factor", 1.0),
                      kw.get("high_freq_factor", 4.0), L), 1.0
  assert rule == "longrope"  # _compute_longrope_parameters (+ longrope_frequency_update)
  ext = np.asarray(kw["long_factor"] if seq_len and seq_len > L else kw["short_factor"])
  attn = kw.get("attention_factor") or (1.0 if factor <= 1 else
                                        math.sqrt(1 + math.log(factor) / math.log(L)))
  return inv_freq / ext, attn


def _rows(enc, x, lengths):
  """The rotated q of rows of ``lengths`` real tokens, batched and padded to ``x``'s length."""
  padded = x.shape[1]
  pos = jnp.arange(padded)[None]
  valid = pos < jnp.array(lengths)[:, None]
  return jax.jit(lambda x_: enc.project(x_, x_, x_, pos, pos, 0, context=pos, valid=valid)[0])(x)


RULE_OPTIONS = [("linear", {}), ("ntk", {}), ("yarn", {}), ("yarn", {"attention_factor": 1.3}),
                ("yarn", {"beta_fast": 8.0, "beta_slow": 0.5}), ("llama3", {}),
                ("llama3", {"low_freq_factor": 2.0, "high_freq_factor": 8.0})]


@pytest.mark.parametrize("rule,options", RULE_OPTIONS)
def test_hf_static_rules_apply_at_every_length(rule, options):
  """linear, ntk, yarn and llama3 are static in HF: one set of frequencies and one cos/sin scale,
  from the factor and the original length, at every length. L = 32, s = 8: rows of 5, 32 (in
  range), 33 and 64 tokens in one padded batch are all rotated by HF's numbers (the per-sequence
  rule used to leave 5 and 32 alone and give 33 its own scaling)."""
  L, s, lengths = 32, 8.0, [5, 32, 33, 64]
  x = _rand((4, 64, 2, 16))
  x = x.at[2].set(x[1])  # the rows of 32 and 33 tokens share their first 32
  enc = rope.Encoding(dims=_dims(64), scaling=rule, factor=s, original_length=L, **options)
  enc.check(64)
  inv, attn = _hf_parameters(rule, 16, s, L, **options)
  q = _rows(enc, x, lengths)
  for row, n in enumerate(lengths):
    want = rope.rotate(x[row, :n, 0], jnp.arange(n), inv_freq=inv.astype(np.float32), scale=attn)
    np.testing.assert_allclose(q[row, :n, 0], want, atol=2e-5)
  np.testing.assert_array_equal(q[1, :32], q[2, :32])  # 32 and 33 tokens: the same rotation
  assert not np.allclose(q[0, :5], _project_q(rope.Encoding(dims=_dims(64)), x, 5)[0], atol=1e-3)
  # The program's bound does not matter either, and static_frequencies is the rule's.
  theta, scale = rope.Encoding(dims=_dims(8), scaling=rule, factor=s, original_length=L,
                               **options).static_frequencies()
  np.testing.assert_allclose(theta, inv, rtol=2e-6)
  assert float(scale) == pytest.approx(attn, rel=1e-6)


def test_hf_static_reference_numbers():
  """Literal numbers (d = 16, base 10000, L = 32, s = 8) derived by hand from HF's formulas."""
  inv = lambda rule: np.asarray(rope.Encoding(dims=_dims(8), scaling=rule, factor=8.0,
                                              original_length=32).static_frequencies()[0])
  # linear: θ/8; θ_1 = 10000^(−1/8) = 0.31622777.
  assert inv("linear")[1] == pytest.approx(0.31622777 / 8, rel=1e-6)
  # ntk: base' = 10000·8^(16/14) = 107672.8, θ'_7 = base'^(−14/16) = 3.9961e-5 = θ_7/8.
  assert inv("ntk")[7] == pytest.approx(10000 ** (-14 / 16) / 8, rel=1e-5)
  assert inv("ntk")[1] == pytest.approx((10000 * 8 ** (16 / 14)) ** (-2 / 16), rel=1e-5)
  # llama3: λ_0 = 6.28 < 32/4 keeps θ_0 = 1; λ_1 = 19.8692 is between: γ = (32/19.8692 − 1)/3 =
  # 0.203512, θ_1·(γ + (1 − γ)/8) = 0.316228·0.303073 = 0.0958400; λ_2 = 62.83 > 32: θ_2/8 = 0.0125.
  np.testing.assert_allclose(inv("llama3")[:3], [1.0, 0.0958400, 0.0125], rtol=2e-6)
  # yarn: correction range (0, 2): pair 0 keeps θ, pair 1 is half way, pairs 2.. get θ/8.
  np.testing.assert_allclose(inv("yarn")[:3], [1.0, 0.31622777 * (0.5 + 0.5 / 8), 0.0125],
                             rtol=2e-6)
  scale = rope.Encoding(dims=_dims(8), scaling="yarn", factor=8.0).static_frequencies()[1]
  assert float(scale) == pytest.approx(1.2079441541679836, rel=1e-6)  # 0.1·ln 8 + 1


def test_hf_longrope_picks_its_factors_by_length_with_one_attention_factor():
  """longrope as HF: θ/short_factor for L' ≤ L, θ/long_factor for L' > L (HF compares
  max(position_ids) + 1 with original_max_position_embeddings), and one cos/sin scale at every
  length: sqrt(1 + ln s / ln L) from the factor (L = 32, s = 8: sqrt(1.6)), or attention_factor."""
  short = (1.0, 1.25, 1.5, 2.0, 1.0, 1.0, 1.0, 1.0)
  long = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 8.0, 8.0)
  L, lengths = 32, [5, 32, 33, 64]
  x = _rand((4, 64, 2, 16))
  for factor, attention_factor in ((8.0, 0.0), (0.0, 1.5), (8.0, 1.5)):
    options = {"short_factor": short, "long_factor": long, "attention_factor": attention_factor}
    enc = rope.Encoding(dims=_dims(64), scaling="longrope", factor=factor, original_length=L,
                        **options)
    enc.check(64)
    q = _rows(enc, x, lengths)
    for row, n in enumerate(lengths):
      inv, attn = _hf_parameters("longrope", 16, factor, L, seq_len=n, **options)
      want = rope.rotate(x[row, :n, 0], jnp.arange(n), inv_freq=inv.astype(np.float32), scale=attn)
      np.testing.assert_allclose(q[row, :n, 0], want, atol=2e-5)
    norms = np.linalg.norm(q, axis=-1) / np.linalg.norm(x, axis=-1)
    expected = attention_factor or math.sqrt(1.6)
    for row, n in enumerate(lengths):
      np.testing.assert_allclose(norms[row, :n], expected, rtol=1e-5)  # in range too


def test_longrope_per_sequence_keeps_the_scale_of_each_length():
  """longrope_per_sequence with factor 0 (posenc's earlier longrope, not HF's): the scale follows
  each sequence's s = L'/L, L = 32: 1 in range, sqrt(1.2) = 1.095 at 2L, sqrt(1.4) = 1.183 at 4L."""
  x = _rand((3, 128, 2, 16))
  enc = rope.Encoding(dims=_dims(128), scaling="longrope_per_sequence", original_length=32,
                      long_factor=(1.0,) * 8)
  enc.check(128)
  q = _rows(enc, x, [32, 64, 128])
  norms = np.linalg.norm(q, axis=-1) / np.linalg.norm(x, axis=-1)
  for row, (n, scale) in enumerate([(32, 1.0), (64, 1.0954451), (128, 1.1832160)]):
    np.testing.assert_allclose(norms[row, :n], scale, rtol=1e-5)


@pytest.mark.parametrize("rule", ["linear", "ntk", "yarn", "llama3", "longrope"])
def test_static_rules_refuse_factor_zero_naming_the_fix(rule):
  options = {"long_factor": (1.0,) * 8} if rule == "longrope" else {}
  with pytest.raises(ConfigError) as e:
    rope.Encoding(dims=_dims(16), scaling=rule, **options).check(96)
  assert e.value.field == "config.encoding.factor"
  # This run's longest sequence (96) over the original length (12), and the per-sequence rule.
  assert "--config.encoding.factor=8 " in str(e.value)
  assert f"--config.encoding.scaling={rule}_per_sequence" in str(e.value)
  # Valid: a factor; the per-sequence rule with factor 0; longrope with only attention_factor.
  rope.Encoding(dims=_dims(16), scaling=rule, factor=2.0, **options).check(96)
  rope.Encoding(dims=_dims(16), scaling=rule + "_per_sequence", **options).check(96)
  if rule == "longrope":
    rope.Encoding(dims=_dims(16), scaling=rule, attention_factor=1.2, **options).check(96)


def test_static_rule_without_factor_is_refused_by_setup():
  """Before any compute, with the factor this run would need: eval inputs up to 48 are 96 tokens,
  training's longest sequence 12."""
  from posenc import setup as setup_lib
  c = helpers.config("rope", **{"encoding.scaling": "yarn", "eval.max_length": 48})
  with pytest.raises(ConfigError, match=r"config\.encoding\.factor: .*--config\.encoding\.factor=8 "):
    setup_lib.setup(c)
  c.encoding.factor = 8.0
  setup_lib.setup(c)


def test_static_longrope_decoding_matches_the_full_pass():
  test_decoding_scales_every_step_by_the_sequence_length(
      "longrope", **{"encoding.long_factor": (1.0, 2.0, 4.0, 8.0), "encoding.factor": 4.0})
