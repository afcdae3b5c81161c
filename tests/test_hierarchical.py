"""Hierarchical decomposition (Su, kexue.fm/archives/7947): n learned rows -> n² positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import train
from posenc.encodings import hierarchical, learned
from posenc.encodings.base import Dims
from posenc.errors import ConfigError
from tests import helpers

N, D = 8, 6
P = jax.random.normal(jax.random.PRNGKey(0), (N, D))


def _module(max_len=N, alpha=0.4, d=D):
  dims = Dims(d_model=d, num_heads=2, num_layers=1, causal=False, max_position=N * N)
  return hierarchical.Encoding(dims=dims, max_len=max_len, alpha=alpha)


def test_first_n_rows_are_the_table_exactly():
  got = hierarchical.extend(P, jnp.arange(N))
  np.testing.assert_array_equal(got, P)  # bit for bit, not just close


def test_equals_su_formula_for_every_position():
  alpha = 0.4
  u = (P - alpha * P[0]) / (1 - alpha)
  k = np.arange(N * N)
  want = alpha * u[k // N] + (1 - alpha) * u[k % N]
  np.testing.assert_allclose(hierarchical.extend(P, k, alpha), want, atol=1e-5)
  np.testing.assert_allclose(hierarchical.decomposition(P, alpha), u, rtol=1e-6)
  # Hand-picked: k = 2n + 5 is α·u[2] + (1 − α)·u[5].
  np.testing.assert_allclose(hierarchical.extend(P, 2 * N + 5), 0.4 * u[2] + 0.6 * u[5], atol=1e-5)


def test_last_index_is_valid_and_the_next_refused():
  last = hierarchical.extend(P, N * N - 1)
  u = hierarchical.decomposition(P)
  np.testing.assert_allclose(last, u[N - 1], atol=1e-5)  # α·u[n−1] + (1 − α)·u[n−1]
  _module().check(N * N)  # positions 0 .. n² − 1
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    _module().check(N * N + 1)


def test_all_n_squared_rows_are_distinct():
  rows = np.asarray(hierarchical.extend(P, jnp.arange(N * N)))
  dist = np.linalg.norm(rows[:, None] - rows[None], axis=-1)
  off_diagonal = dist[~np.eye(N * N, dtype=bool)]
  assert len(rows) == 64 and off_diagonal.min() > 1e-3


def test_alpha_half_is_refused_because_it_swaps_digits():
  u = hierarchical.decomposition(P, 0.5)
  a, b = 2, 5  # what α = 0.5 would do: (a, b) and (b, a) coincide
  np.testing.assert_allclose(0.5 * u[a] + 0.5 * u[b], 0.5 * u[b] + 0.5 * u[a])
  with pytest.raises(ConfigError, match="config.encoding.alpha"):
    _module(alpha=0.5).check(10)
  for bad in (0.0, 1.0, -0.2):
    with pytest.raises(ConfigError, match="config.encoding.alpha"):
      _module(alpha=bad).check(10)
  with pytest.raises(ValueError):
    hierarchical.extend(P, jnp.arange(3), alpha=0.5)


def test_parameter_matches_learned_so_a_learned_table_loads():
  x, pos = jnp.zeros((1, 4, D)), jnp.arange(4, dtype=jnp.int32)[None]
  dims = _module().dims
  lp = learned.Encoding(dims=dims, max_len=N).init(jax.random.PRNGKey(1), x, pos, method="embed")
  hp = _module().init(jax.random.PRNGKey(1), x, pos, method="embed")
  assert jax.tree_util.tree_map(jnp.shape, lp) == jax.tree_util.tree_map(jnp.shape, hp)
  # Same table -> same encodings inside the table.
  as_learned = learned.Encoding(dims=dims, max_len=N).apply(lp, x, pos, method="embed")
  np.testing.assert_array_equal(_module().apply(lp, x, pos, method="embed"), as_learned)


def test_smoke_run_decoder(tmp_path):
  results = helpers.run_smoke(tmp_path, "hierarchical", **{"model.causal": True})
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"


def test_learned_run_evaluated_beyond_its_table(tmp_path):
  """End to end, encoder: train learned (20 rows), then evaluate it as hierarchical to length 30."""
  rows = 20  # smoke evaluates to length 10: input + answer = 20 positions
  helpers.run_smoke(tmp_path, "learned", **{"encoding.max_len": rows})
  source = str(tmp_path / "learned-run")
  far = {"encoding.max_len": rows, "eval.max_length": 30}
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    train.setup(helpers.config("learned", **far))  # 60 positions: learned has no rows for them
  c = helpers.config("hierarchical", **far, **{"init.from_workdir": source, "train.steps": 0})
  c.workdir = str(tmp_path / "hierarchical-run")
  logs = []
  ext = train.train_and_evaluate(c, log=logs.append)
  warm = [line for line in logs if line.startswith("warm start:")]
  assert warm and "0 fresh" in warm[0], logs  # every parameter, the table included, was loaded
  helpers.check_smoke_results(ext)
  assert ext["mode"] == "encoder" and ext["eval_range"] == [1, 30]
  # Inside the table the two are the same model: identical logits. (Scores are not compared:
  # the two runs bucket lengths differently, and a near-tie argmax may flip with the padding.)
  params, _ = train.load_params(source)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, rows), 3, 7)
  pos, valid = jnp.arange(rows, dtype=jnp.int32)[None], jnp.ones((2, rows), bool)
  as_learned = train.setup(helpers.config("learned", **{"encoding.max_len": rows})).model(rows)
  as_hier = train.setup(c).model(rows)
  np.testing.assert_allclose(as_hier.apply({"params": params}, tokens, pos, valid),
                             as_learned.apply({"params": params}, tokens, pos, valid), atol=1e-6)
