"""xPos: the official forward, offset-only logits with decay, RoPE as γ → ∞, causal only."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import rope, xpos
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def _rand(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def _official(x, downscale, scale_base=512):
  """torchscale/component/xpos_relative_position.py XPOS.forward (offset 0), restated in NumPy.

  x: [L, d]. Scale exponents use positions -(L//2 ceil) .. , rotation uses 0..L-1,
  pairs are interleaved (rotate_every_two), sin/cos are multiplied by the scale.
  """
  x = np.asarray(x, np.float64)
  length, d = x.shape
  zeta = (np.arange(0, d, 2) + 0.4 * d) / (1.4 * d)
  min_pos = -length // 2  # Python floor division, as in the official code
  scale = zeta[None] ** (np.arange(min_pos, min_pos + length)[:, None] / scale_base)
  inv_freq = 1.0 / 10000 ** (np.arange(d // 2) / (d // 2))
  angles = np.arange(length)[:, None] * inv_freq[None]
  sin, cos = np.sin(angles), np.cos(angles)
  if downscale:
    scale = 1 / scale
  sin, cos = np.repeat(sin * scale, 2, -1), np.repeat(cos * scale, 2, -1)
  rot = np.stack([-x[:, 1::2], x[:, 0::2]], -1).reshape(length, d)
  return x * cos + rot * sin


def test_zeta():
  np.testing.assert_allclose(xpos.zeta(8), [3.2 / 11.2, 5.2 / 11.2, 7.2 / 11.2, 9.2 / 11.2], rtol=1e-6)


@pytest.mark.parametrize("length", [5, 6])
def test_matches_official_forward(length):
  x = _rand((length, 8))
  pos = jnp.arange(length)
  for downscale in (False, True):
    np.testing.assert_allclose(xpos.apply(x, pos, downscale=downscale), _official(x, downscale),
                               rtol=1e-5, atol=1e-6)


def _logits(q, k, pos, gamma=512.0):
  return xpos.apply(q, pos, downscale=False, gamma=gamma) @ xpos.apply(k, pos, downscale=True, gamma=gamma).T


def test_logits_depend_only_on_offset():
  q, k = _rand((8, 16), 1), _rand((8, 16), 2)
  pos = jnp.arange(8)
  base = _logits(q, k, pos)
  np.testing.assert_allclose(_logits(q, k, pos + 300), base, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(_logits(q, k, pos + 5000), base, rtol=2e-3, atol=2e-3)


def test_decay_times_rope_per_pair():
  d, gamma = 8, 16.0  # a small γ makes the decay visible
  zeta = np.asarray(xpos.zeta(d))
  pos = jnp.arange(10)
  for m in range(d // 2):
    mask = np.zeros(d, np.float32)
    mask[2 * m: 2 * m + 2] = 1
    q, k = _rand((10, d), 3) * mask, _rand((10, d), 4) * mask
    got = _logits(q, k, pos, gamma)
    plain = rope.rotate(q, pos) @ rope.rotate(k, pos).T
    offsets = np.arange(10)[:, None] - np.arange(10)[None]
    np.testing.assert_allclose(got, plain * zeta[m] ** (offsets / gamma), rtol=1e-4, atol=1e-5)


def test_equals_rope_when_gamma_is_infinite():
  x = _rand((7, 16))
  pos = jnp.arange(7) + 3
  for downscale in (False, True):
    np.testing.assert_allclose(xpos.apply(x, pos, downscale=downscale, gamma=1e30), rope.rotate(x, pos),
                               atol=1e-6)
  assert not np.allclose(xpos.apply(x, pos, downscale=False, gamma=4.0), rope.rotate(x, pos), atol=1e-3)


def test_hook_layout_and_values():
  dims = Dims(d_model=32, num_heads=2, num_layers=1, causal=True, max_position=8)
  enc = xpos.Encoding(dims=dims)
  q, k, v = _rand((3, 8, 2, 16), 1), _rand((3, 8, 2, 16), 2), _rand((3, 8, 2, 16), 3)
  pos = jnp.arange(8)[None]
  qo, ko, vo = enc.project(q, k, v, pos, pos, 0)
  np.testing.assert_array_equal(vo, v)
  for h in range(2):
    np.testing.assert_allclose(qo[:, :, h], xpos.apply(q[:, :, h], pos, downscale=False), atol=1e-6)
    np.testing.assert_allclose(ko[:, :, h], xpos.apply(k[:, :, h], pos, downscale=True), atol=1e-6)


def test_centre_keeps_powers_finite_at_large_positions():
  x = _rand((4, 16))
  pos = jnp.arange(4) + 100_000  # without centring ζ^(1e5/512) underflows to 0
  out = xpos.apply(x, pos, downscale=True)
  assert np.all(np.isfinite(out)) and float(jnp.linalg.norm(out)) > 0.1


def test_encoder_mode_is_refused(tmp_path):
  with pytest.raises(ConfigError) as e:
    helpers.run_smoke(tmp_path, "xpos", **{"model.causal": False})
  assert e.value.field == "config.model.causal"


def test_smoke_decoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "xpos")
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"
