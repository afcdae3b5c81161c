"""Hierarchical decomposition (Su, kexue.fm/archives/7947): n learned rows -> n² positions."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
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


def test_rows_past_the_training_bound_are_never_read():
  """A parameter longer than the training bound (a learned table's shape) decomposes its trained rows."""
  trained = 5
  dims = Dims(d_model=D, num_heads=2, num_layers=1, causal=False, max_position=64,
              train_positions=trained)
  m = hierarchical.Encoding(dims=dims, max_len=N)
  k = jnp.arange(20, dtype=jnp.int32)
  got = m.apply({"params": {"table": P}}, jnp.zeros((1, 20, D)), k[None], method="embed")[0]
  np.testing.assert_array_equal(got[:trained], P[:trained])
  np.testing.assert_array_equal(got[trained:], hierarchical.extend(P[:trained], k[trained:]))
  assert np.abs(np.asarray(got[trained:N] - P[trained:])).max(-1).min() > 1e-3  # not P's rows
  m.check(trained ** 2)
  with pytest.raises(ConfigError, match="config.eval.max_length"):
    m.check(trained ** 2 + 1)
  # max_len = 0 (the default): exactly the trained rows; refused where they are unknown.
  sized = hierarchical.Encoding(dims=dims)
  x, pos = jnp.zeros((1, 4, D)), k[None, :4]
  assert sized.init(jax.random.PRNGKey(0), x, pos, method="embed")["params"]["table"].shape == (trained, D)
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    _module(max_len=0).check(4)  # Dims.train_positions = 0
  with pytest.raises(ConfigError, match="config.encoding.max_len"):
    _module(max_len=-3).check(4)


@pytest.mark.parametrize("preset", ["smoke", "default", "paper"])
def test_presets_size_the_table_to_the_training_positions(preset):
  c = helpers.config("hierarchical", preset)
  s = train.setup(c)
  n = data_lib.total_length(s.task, c.task.train_max_length)  # input + answer, contiguous from 0
  assert c.encoding.max_len == 0 and n == {"smoke": 12, "default": 32, "paper": 80}[preset]
  x, pos = jnp.zeros((1, 4, c.model.d_model)), jnp.zeros((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: s.model(1).encoding.init(jax.random.PRNGKey(0), x, pos, method="embed"))
  assert shapes["params"]["table"].shape == (n, c.model.d_model)
  # Evaluation goes past the trained rows, and stays within the n² the decomposition reaches.
  assert n < data_lib.total_length(s.task, c.eval.max_length) <= n * n


@pytest.mark.parametrize("overrides, n", [
    ({"positions.offset": 3}, 15),                                   # 3 + 12 tokens
    ({"positions.kind": "randomized", "positions.max_position": 64}, 64),  # drawn from [0, 64)
    ({"positions.random_offset": True, "positions.max_position": 40}, 40),
])
def test_training_bound_follows_the_position_sampler(overrides, n):
  s = train.setup(helpers.config("hierarchical", **overrides))
  assert s.train_positions() == n
  assert s.model(1).encoding.rows() == n


def test_trained_run_decomposes_every_position_past_training(tmp_path):
  """Decoder smoke run; training lengths 6 only, so all 12 positions train in every step."""
  n, d, longest = 12, 16, 20  # smoke: train to length 6 (12 positions), evaluate to 10 (20)
  overrides = {"model.causal": True, "task.train_min_length": 6}
  results = helpers.run_smoke(tmp_path, "hierarchical", **overrides)
  helpers.check_smoke_results(results)
  assert results["mode"] == "decoder"
  c = helpers.config("hierarchical", **overrides)
  s = train.setup(c)
  table = train.load_params(str(tmp_path / "hierarchical-run"))[0]["encoding"]["table"]
  assert table.shape == (n, d)
  init = train.init_state(s, train.root_keys(c.seed)["init"])["params"]["encoding"]["table"]
  assert (np.abs(np.asarray(table - init)).max(-1) > 0).all()  # every row of the table trained
  k = jnp.arange(longest, dtype=jnp.int32)
  got = s.model(longest).encoding.apply({"params": {"table": table}}, jnp.zeros((1, longest, d)),
                                        k[None], method="embed")[0]
  np.testing.assert_array_equal(got[:n], table)  # in range: P[k] bit for bit
  np.testing.assert_array_equal(got[n:], hierarchical.extend(table, k[n:]))


def test_evaluation_past_n_squared_is_refused_before_any_compute(tmp_path):
  # Smoke: n = 12 trained rows reach 144 positions; reverse_string of length 72 needs 144.
  train.setup(helpers.config("hierarchical", **{"eval.max_length": 72}))
  c = helpers.config("hierarchical", **{"eval.max_length": 73})  # 146 positions
  c.workdir = str(tmp_path / "run")
  with pytest.raises(ConfigError, match=r"config\.eval\.max_length.*at most 144 tokens.*at least 13 positions"):
    train.train_and_evaluate(c, log=lambda *_: None)
  assert not os.path.exists(c.workdir)
  # An explicit table shorter than the training bound is the limit: its field, and the rows that do.
  with pytest.raises(ConfigError, match=r"config\.encoding\.max_len.*at least 5"):
    train.setup(helpers.config("hierarchical", **{"encoding.max_len": 4}))  # 16 < 20 positions
  train.setup(helpers.config("hierarchical", **{"encoding.max_len": 5}))


def test_learned_run_evaluated_beyond_its_table(tmp_path):
  """End to end, encoder: train learned (20 rows, 12 of them reached by training), then evaluate
  it as hierarchical to length 30: positions from 12 on come from the 12 trained rows."""
  rows, n = 20, 12  # smoke trains to length 6 (12 positions) and evaluates to 10 (20 positions)
  helpers.run_smoke(tmp_path, "learned", **{"encoding.max_len": rows})
  source = str(tmp_path / "learned-run")
  params, _ = train.load_params(source)
  table = params["encoding"]["table"]
  s_learned = train.setup(helpers.config("learned", **{"encoding.max_len": rows}))
  init = train.init_state(s_learned, train.root_keys(0)["init"])["params"]["encoding"]["table"]
  # What learned evaluates past training: rows that never got a gradient (still the N(0, 0.02) init).
  np.testing.assert_array_equal(table[n:], init[n:])
  assert np.abs(np.asarray(table[:n] - init[:n])).max() > 0
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
  # Past the 12 trained positions: the decomposition of those rows, not learned's untrained rows.
  k = jnp.arange(60, dtype=jnp.int32)
  got = train.setup(c).model(60).encoding.apply({"params": {"table": table}}, jnp.zeros((1, 60, 16)),
                                                k[None], method="embed")[0]
  np.testing.assert_array_equal(got[:n], table[:n])
  np.testing.assert_array_equal(got[n:], hierarchical.extend(table[:n], k[n:]))
  assert np.abs(np.asarray(got[n:rows] - table[n:rows])).max(-1).min() > 1e-3
  # Within the training positions the two are the same model: identical logits. (Scores are not
  # compared: the two runs bucket lengths differently, and a near-tie argmax may flip.)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, n), 3, 7)
  pos, valid = jnp.arange(n, dtype=jnp.int32)[None], jnp.ones((2, n), bool)
  as_learned = s_learned.model(n)
  as_hier = train.setup(c).model(n)
  np.testing.assert_allclose(as_hier.apply({"params": params}, tokens, pos, valid),
                             as_learned.apply({"params": params}, tokens, pos, valid), atol=1e-6)
