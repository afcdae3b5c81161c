"""Complex order (Wang et al., ICLR 2020): z = r·exp(i(ω·pos + θ)) per word, read by a
complex-valued attention (real projections shared by both streams, scores |Σ q k|).

The references below are written with numpy complex numbers: a complex vector times a real
matrix is exactly "the same real weights on the real and the imaginary stream".
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import complex as cx
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from posenc.model import ModelConfig, Transformer
from tests import helpers

V, D, H = 7, 16, 2  # 8 complex channels, 2 heads of 4
C, DC = D // 2, D // (2 * H)

TOKENS = jnp.array([[3, 4, 3, 6, 0], [5, 5, 1, 2, 0]], jnp.int32)
POS = jnp.array([[0, 1, 2, 3, 4]], jnp.int32)
VALID = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], bool)  # the second row ends in padding


def _module(attention="complex", layers=1, causal=False, d=D, heads=H):
  dims = Dims(d_model=d, num_heads=heads, num_layers=layers, causal=causal, max_position=64,
              vocab_size=V)
  return cx.Encoding(dims=dims, attention=attention)


def _perturbed(params, seed=3):
  """Every parameter random (r, ω, θ nonzero everywhere), so nothing hides behind an init."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      tree, [jax.random.normal(k, p.shape, p.dtype) * 0.5 for p, k in zip(leaves, keys)])


def _as_complex(out):
  c = out.shape[-1] // 2
  return np.asarray(out[..., :c], np.float64) + 1j * np.asarray(out[..., c:], np.float64)


def _np(tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# --- the embedding ------------------------------------------------------------------------

def test_initial_frequencies_follow_the_official_table():
  # FreedomIntelligence/complex-order, LANGUAGE MODELING/pytorch-complex/complex_mem_transformer.py,
  # get_sinusoid_encoding_table: 1 / 10000^(2·(j // 2) / d) for every word, PAD row zero.
  # With d = 8 complex channels: 10000^(−1/4) = 0.1, 10000^(−1/2) = 0.01, 10000^(−3/4) = 0.001.
  official = [1.0, 1.0, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  np.testing.assert_allclose(cx.initial_frequencies(8), official, rtol=1e-6)
  params = _module().init(jax.random.PRNGKey(0), TOKENS, POS, method="token_embed")["params"]
  assert params["frequency"].shape == (V, C) and params["amplitude"].shape == (V, C)
  np.testing.assert_array_equal(params["frequency"][0], 0.0)
  np.testing.assert_allclose(params["frequency"][1:], np.tile(official, (V - 1, 1)), rtol=1e-6)
  np.testing.assert_array_equal(params["phase"], 0.0)  # the official code has no initial phase
  assert params["layer0_query"].shape == (C, H, DC) and params["layer0_out"].shape == (H, DC, C)


def _params(m, seed=3):
  return {"params": _perturbed(m.init(jax.random.PRNGKey(0), TOKENS, POS,
                                      method="token_embed")["params"], seed)}


@pytest.mark.parametrize("delta", [1, 7, 250])
def test_shifting_position_multiplies_by_exp_i_omega_delta(delta):
  m = _module()
  params = _params(m)
  z = _as_complex(m.apply(params, TOKENS, POS, method="token_embed"))
  z_shift = _as_complex(m.apply(params, TOKENS, POS + delta, method="token_embed"))
  omega = np.asarray(params["params"]["frequency"], np.float64)[np.asarray(TOKENS)]
  np.testing.assert_allclose(z_shift, z * np.exp(1j * omega * delta), atol=2e-4)


def test_layout_and_formula():
  m = _module()
  params = _params(m)
  out = m.apply(params, TOKENS, POS, method="token_embed")
  assert out.shape == (2, 5, D) and out.dtype == jnp.float32
  p = _np(params["params"])
  b, t, j = 1, 3, 2  # token 2 at position 3, channel 2
  w = int(TOKENS[b, t])
  want = p["amplitude"][w, j] * np.exp(1j * (p["frequency"][w, j] * 3 + p["phase"][w, j]))
  assert np.isclose(out[b, t, j], want.real, atol=1e-5)            # real half first
  assert np.isclose(out[b, t, C + j], want.imag, atol=1e-5)  # imaginary half second
  # The modulus is the amplitude: position moves only the phase.
  np.testing.assert_allclose(np.abs(_as_complex(out)), np.abs(p["amplitude"][np.asarray(TOKENS)]),
                             rtol=1e-5)
  assert not np.allclose(out[0, 0], out[0, 2])  # the same word at two positions differs


# --- the attention sublayer ----------------------------------------------------------------

def _sublayer(mod, tokens, positions, mask):
  """token_embed -> projections -> attend -> out: the first attention sublayer alone."""
  x = mod.token_embed(tokens, positions)
  q, k, v = (mod.projection(x, kind, 0) for kind in ("query", "key", "value"))
  o, w = mod.attend(q, k, v, positions, positions, mask, 0)
  real, imag = cx.score_parts(q, k)
  return {"x": x, "out": mod.projection(o, "out", 0), "weights": w, "real": real, "imag": imag}


def _np_sublayer(p, tokens, positions, mask):
  """Numpy complex reference of :func:`_sublayer` (complex attention)."""
  t = np.asarray(tokens)
  pos = np.asarray(positions, np.float64)[..., None]
  z = p["amplitude"][t] * np.exp(1j * (p["frequency"][t] * pos + p["phase"][t]))  # [B, L, C]
  q, k, v = (np.einsum("blc,chd->blhd", z, p[f"layer0_{n}"]) for n in ("query", "key", "value"))
  score = np.einsum("bqhd,bkhd->bhqk", q, k)  # unconjugated
  s = np.where(np.asarray(mask), np.abs(score) / np.sqrt(q.shape[-1]), -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", w, v)
  return {"z": z, "score": score, "weights": w, "out": np.einsum("bqhd,hdc->bqc", o, p["layer0_out"])}


MASK = VALID[:, None, None, :]


def test_sublayer_equals_numpy_complex_reference():
  m = _module()
  params = _params(m)
  got = m.apply(params, TOKENS, POS, MASK, method=_sublayer)
  want = _np_sublayer(_np(params["params"]), TOKENS, POS, MASK)
  np.testing.assert_allclose(_as_complex(got["x"]), want["z"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got["real"]) + 1j * np.asarray(got["imag"]), want["score"],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["weights"], want["weights"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_as_complex(got["out"]), want["out"], rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(got["weights"])[1, :, :, 4] == 0)  # the padded key gets no weight


def _with_frequencies(params, omega):
  """``params`` with every word's frequency row replaced by ``omega`` ([V, C] or [V, 1])."""
  inner = dict(params["params"])
  inner["frequency"] = jnp.broadcast_to(jnp.asarray(omega, jnp.float32), inner["frequency"].shape)
  return {"params": inner}


@pytest.mark.parametrize("delta", [3, 250])
def test_shift_keeps_score_moduli_when_each_word_has_one_frequency(delta):
  """One ω per word (official LM ``schema=1``): q_i, k_j turn by e^{iω_w δ}, so Σ q k turns by
  e^{i(ω_{w_i} + ω_{w_j})δ} and every score modulus, hence every weight, stays put."""
  m = _module()
  omega_w = np.linspace(0.1, 1.3, V)[:, None]  # [V, 1]: word-dependent, channel-independent
  params = _with_frequencies(_params(m), omega_w)
  a = m.apply(params, TOKENS, POS, MASK, method=_sublayer)
  b = m.apply(params, TOKENS, POS + delta, MASK, method=_sublayer)
  np.testing.assert_allclose(b["weights"], a["weights"], atol=2e-5)
  w = omega_w[np.asarray(TOKENS), 0]  # [B, L]
  turn = np.exp(1j * (w[:, None, :, None] + w[:, None, None, :]) * delta)  # [B, 1, Lq, Lk]
  score_a = np.asarray(a["real"], np.float64) + 1j * np.asarray(a["imag"], np.float64)
  score_b = np.asarray(b["real"], np.float64) + 1j * np.asarray(b["imag"], np.float64)
  np.testing.assert_allclose(score_b, score_a * turn, atol=2e-3)


@pytest.mark.parametrize("delta", [3, 250])
def test_shift_turns_the_sublayer_output_when_all_frequencies_agree(delta):
  m = _module()
  params = _with_frequencies(_params(m), 0.37)
  a = m.apply(params, TOKENS, POS, MASK, method=_sublayer)
  b = m.apply(params, TOKENS, POS + delta, MASK, method=_sublayer)
  np.testing.assert_allclose(_as_complex(b["out"]), _as_complex(a["out"]) * np.exp(0.37j * delta),
                             atol=2e-3)


def test_per_channel_frequencies_break_the_score_invariance():
  """The invariances above need one frequency per word; the default per-channel ω has none."""
  m = _module()
  params = _params(m)  # random ω per word and channel
  a = m.apply(params, TOKENS, POS, MASK, method=_sublayer)
  b = m.apply(params, TOKENS, POS + 3, MASK, method=_sublayer)
  assert np.max(np.abs(np.asarray(a["weights"]) - np.asarray(b["weights"]))) > 1e-2


# --- the whole model -------------------------------------------------------------------------

def _layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_model(p, tokens, positions, valid, causal, attention):
  """A one-layer post-LN posenc Transformer with complex order, in numpy."""
  e, t = p["encoding"], np.asarray(tokens)
  pos = np.asarray(positions, np.float64)[..., None]
  z = e["amplitude"][t] * np.exp(1j * (e["frequency"][t] * pos + e["phase"][t])) * np.sqrt(D)
  x = np.concatenate([z.real, z.imag], -1)  # [Re | Im]
  length = t.shape[1]
  mask = np.asarray(valid)[:, None, None, :]
  if causal:
    mask = mask & np.tril(np.ones((length, length), bool))[None, None]
  if attention == "complex":
    q, k, v = (np.einsum("blc,chd->blhd", z, e[f"layer0_{n}"]) for n in ("query", "key", "value"))
    s = np.abs(np.einsum("bqhd,bkhd->bhqk", q, k)) / np.sqrt(DC)
  else:
    q, k, v = (np.einsum("bld,dhe->blhe", x, e[f"layer0_{n}"]["kernel"]) + e[f"layer0_{n}"]["bias"]
               for n in ("query", "key", "value"))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(D // H)
  s = np.where(mask, s, -np.inf)
  w = np.exp(s - s.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", w, v)
  if attention == "complex":
    y = np.einsum("bqhd,hdc->bqc", o, e["layer0_out"])
    y = np.concatenate([y.real, y.imag], -1)
  else:
    y = np.einsum("bqhd,hdc->bqc", o, e["layer0_out"]["kernel"]) + e["layer0_out"]["bias"]
  x = _layer_norm(x + y, p["layer0_ln1"])
  f = np.maximum(x @ p["layer0_ff1"]["kernel"] + p["layer0_ff1"]["bias"], 0)
  f = f @ p["layer0_ff2"]["kernel"] + p["layer0_ff2"]["bias"]
  x = _layer_norm(x + f, p["layer0_ln2"])
  return w, x @ p["head"]["kernel"] + p["head"]["bias"]


def _model(causal, attention):
  cfg = ModelConfig(vocab_size=V, output_vocab_size=5, d_model=D, num_heads=H, num_layers=1,
                    d_ff=32, dropout=0.0, causal=causal)
  return Transformer(cfg, _module(attention, causal=causal), capture_attention=True)


@pytest.mark.parametrize("attention", ["complex", "real"])
@pytest.mark.parametrize("causal", [False, True])
def test_model_equals_numpy_reference(causal, attention):
  model = _model(causal, attention)
  params = _perturbed(model.init(jax.random.PRNGKey(0), TOKENS, POS, VALID)["params"], seed=5)
  logits, state = model.apply({"params": params}, TOKENS, POS, VALID, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_0"]
  want_w, want_logits = _np_model(_np(params), TOKENS, POS, VALID, causal, attention)
  np.testing.assert_allclose(weights, want_w, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
  if causal:  # nothing attends to a later token
    assert np.all(np.triu(np.asarray(weights), k=1) == 0)
  projections = [k for k in params if k.startswith("layer0_") and not k.startswith("layer0_ln")
                 and not k.startswith("layer0_ff")]
  assert projections == []  # the scheme owns the attention projections


def test_gradients_are_finite_at_zero_scores():
  """A zero key gives |Σ q k| = 0, where sqrt has no derivative; the gradient stays finite."""
  q, k, v = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 4, H, 2 * DC))
  k = k.at[:, 1].set(0.0)
  mask = jnp.ones((1, 1, 4, 4), bool)
  grads = jax.jit(jax.grad(lambda q, k, v: cx.complex_attention(q, k, v, mask)[0].sum(),
                           argnums=(0, 1, 2)))(q, k, v)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  assert float(jax.grad(lambda a: cx.modulus(a, a))(0.0)) == 0.0


# --- configuration ---------------------------------------------------------------------------

def test_check_refuses_bad_settings():
  with pytest.raises(ConfigError, match="num_heads"):
    _module(d=12, heads=4).check(64)  # 6 complex channels over 4 heads
  _module("real", d=12, heads=4).check(64)  # the real form only needs an even width
  with pytest.raises(ConfigError, match="d_model"):
    _module("real", d=15, heads=3).check(64)
  with pytest.raises(ConfigError, match="config.encoding.attention"):
    _module("quaternion").check(64)


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_presets_are_valid(preset):
  c = importlib.import_module("configs.complex").get_config(preset)
  assert c.encoding.attention == "complex"
  dims = Dims(d_model=c.model.d_model, num_heads=c.model.num_heads, num_layers=c.model.num_layers,
              causal=c.model.causal, max_position=64, vocab_size=V)
  cx.Encoding(dims=dims, attention=c.encoding.attention).check(64)


@pytest.mark.parametrize("causal", [False, True])
def test_smoke_run(tmp_path, causal):
  results = helpers.run_smoke(tmp_path, "complex", **{"model.causal": causal})
  helpers.check_smoke_results(results)
  assert results["mode"] == ("decoder" if causal else "encoder")
