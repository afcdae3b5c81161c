"""CoPE: contextual positions, interpolation, the logits term against a direct loop, causal only."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc.encodings import cope
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers


def test_all_gates_one_count_tokens():
  n = 6
  gates = jnp.tril(jnp.ones((n, n)))
  p = np.asarray(cope.positions(gates))
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  np.testing.assert_allclose(p, np.where(j <= i, i - j + 1, 0))


def test_positions_are_suffix_sums():
  g = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (2, 5, 5))) * np.tril(np.ones((5, 5)))
  want = np.array([[[g[b, i, j:i + 1].sum() if j <= i else 0.0 for j in range(5)] for i in range(5)]
                   for b in range(2)])
  np.testing.assert_allclose(cope.positions(jnp.asarray(g)), want, rtol=1e-6, atol=1e-7)


def test_interpolation_between_integer_rows():
  z = jnp.array([[10.0, 20.0, 40.0, 80.0]])  # one query, scores at integer positions 0..3
  pos = jnp.array([[0.0, 1.0, 1.25, 2.5, 3.0]])
  np.testing.assert_allclose(cope.interpolate(z, pos), [[10.0, 20.0, 25.0, 60.0, 80.0]], rtol=1e-6)


def _dims(layers=2, heads=2, dh=4):
  return Dims(d_model=heads * dh, num_heads=heads, num_layers=layers, causal=True, max_position=16)


def _naive(q, k, table, npos_max):
  """The paper's definition, one (b, h, i, j) at a time, in NumPy."""
  q, k, table = (np.asarray(a, np.float64) for a in (q, k, table))
  b_, l, h_, d = q.shape
  out = np.zeros((b_, h_, l, l))
  for b in range(b_):
    for h in range(h_):
      for i in range(l):
        gates = [1 / (1 + math.exp(-q[b, i, h] @ k[b, t, h] / math.sqrt(d))) for t in range(i + 1)]
        for j in range(i + 1):
          p = min(sum(gates[j:i + 1]), npos_max - 1)
          lo, hi = math.floor(p), math.ceil(p)
          e = table[:, lo] * (1 - (p - lo)) + table[:, hi] * (p - lo)
          out[b, h, i, j] = q[b, i, h] @ e
  return out


def test_logits_term_matches_the_definition():
  npos_max = 4  # small, so that the clamp is exercised
  enc = cope.Encoding(dims=_dims(), npos_max=npos_max)
  q = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 2, 4))
  k = jax.random.normal(jax.random.PRNGKey(2), (2, 6, 2, 4))
  pos = jnp.arange(6)[None]
  every_layer = lambda m, *a: [m.logits(*a, layer) for layer in range(2)]  # as the model does
  variables = enc.init(jax.random.PRNGKey(0), q, k, pos, pos, method=every_layer)
  # Zero-initialised tables: the term starts at exactly 0.
  np.testing.assert_array_equal(enc.apply(variables, q, k, pos, pos, 0, method=enc.logits), 0.0)
  tables = {name: jax.random.normal(jax.random.PRNGKey(n + 3), t.shape)
            for n, (name, t) in enumerate(variables["params"].items())}
  assert sorted(tables) == ["table_layer0", "table_layer1"]  # one table per layer
  assert tables["table_layer0"].shape == (4, npos_max)  # [d_h, npos_max], shared by heads
  for layer in range(2):
    got = jax.jit(lambda t: enc.apply({"params": t}, q, k, pos, pos, layer, method=enc.logits))(tables)
    want = _naive(q, k, tables[f"table_layer{layer}"], npos_max)
    causal = np.tril(np.ones((6, 6), bool))
    np.testing.assert_allclose(np.asarray(got)[..., causal], want[..., causal], rtol=1e-4, atol=1e-5)


def test_gradient_reaches_the_gates():
  enc = cope.Encoding(dims=_dims(layers=1), npos_max=8)
  q = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 2, 4))
  k = jax.random.normal(jax.random.PRNGKey(2), (1, 5, 2, 4))
  pos = jnp.arange(5)[None]
  table = {"table_layer0": jax.random.normal(jax.random.PRNGKey(3), (4, 8))}
  grad_k = jax.jit(jax.grad(lambda k_: enc.apply({"params": table}, q, k_, pos, pos, 0,
                                                 method=enc.logits).sum()))(k)
  assert float(jnp.abs(grad_k).sum()) > 0  # keys act only through the gates


def test_encoder_mode_is_refused(tmp_path):
  with pytest.raises(ConfigError) as e:
    helpers.run_smoke(tmp_path, "cope", **{"model.causal": False})
  assert e.value.field == "config.model.causal"


def test_smoke_decoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "cope")
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"
