"""Position samplers: contiguous and randomized (Ruoss et al., ACL 2023)."""

import jax
import ml_collections
import numpy as np
import pytest

from posenc import positions
from posenc.errors import ConfigError


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(kind="contiguous", max_position=2048, per_example=True,
                                     offset=0, random_offset=False, eval="same"))
  c.update(kw)
  return c


def test_randomized_is_sorted_distinct_in_range_and_deterministic():
  key = jax.random.PRNGKey(3)
  pos = np.asarray(positions.randomized(key, 16, 30, 40, max_position=100))
  assert pos.shape == (16, 40)
  real = pos[:, :30]
  assert np.all(np.diff(real, axis=1) > 0)
  assert real.min() >= 0 and real.max() < 100
  assert np.all(pos[:, 30:] < 100)
  np.testing.assert_array_equal(pos, positions.randomized(key, 16, 30, 40, max_position=100))
  other = np.asarray(positions.randomized(jax.random.PRNGKey(4), 16, 30, 40, max_position=100))
  assert not np.array_equal(pos, other)
  # Per-example draws differ between rows; a per-batch draw is one row.
  assert len({tuple(r) for r in real}) > 1
  assert positions.randomized(key, 16, 30, 40, max_position=100, per_example=False).shape == (1, 40)


def test_randomized_covers_the_range():
  pos = np.asarray(positions.randomized(jax.random.PRNGKey(0), 256, 8, 8, max_position=64))
  counts = np.bincount(pos.ravel(), minlength=64)
  assert counts.min() > 0  # every position is drawn sometimes
  assert counts.max() < 4 * counts.mean()


def test_contiguous_offsets():
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(positions.contiguous(key, 2, 3, 5, offset=7), [[7, 8, 9, 10, 11]])
  pos = np.asarray(positions.contiguous(key, 32, 10, 12, random_offset=True, max_position=50))
  assert pos.shape == (32, 12)
  assert np.all(np.diff(pos[:, :10], axis=1) == 1)
  assert pos.min() >= 0 and pos.max() < 50 and len(set(pos[:, 0])) > 1


def test_eval_switch_and_bounds():
  c = _cfg(kind="randomized", max_position=100, eval="contiguous")
  train = positions.make(c, train=True)
  evaluate = positions.make(c, train=False)
  assert train(jax.random.PRNGKey(0), 2, 4, 4).shape == (2, 4)
  np.testing.assert_array_equal(evaluate(jax.random.PRNGKey(0), 2, 4, 4), [[0, 1, 2, 3]])
  assert positions.bound(c, 10, train=True) == 100
  assert positions.bound(c, 10, train=False) == 10
  with pytest.raises(ConfigError, match="config.positions.max_position"):
    positions.check_length(_cfg(kind="randomized", max_position=50), 60, train=False,
                           field="config.eval.max_length")
  with pytest.raises(ConfigError, match="config.positions.kind"):
    positions.validate(_cfg(kind="shuffled"))


@pytest.mark.parametrize("kw", [{}, {"offset": 5}, {"random_offset": True},
                                {"random_offset": True, "eval": "contiguous"},
                                {"kind": "randomized", "max_position": 64},
                                {"kind": "randomized", "max_position": 64, "per_example": False},
                                {"kind": "randomized", "max_position": 64, "eval": "contiguous"}])
def test_shared_contiguous_is_what_the_sampler_draws(kw):
  """``shared_contiguous`` (the promise behind ``Dims.contiguous``) holds exactly when every
  draw of the sampler is one ``[1, L]`` run ``p0 + arange(L)``."""
  c = _cfg(**kw)
  for train in (True, False):
    sample = positions.make(c, train=train)
    draws = [np.asarray(sample(jax.random.PRNGKey(k), 4, 10, 12)) for k in range(4)]
    runs = all(d.shape[0] == 1 and np.array_equal(d[0], d[0, 0] + np.arange(12)) for d in draws)
    assert positions.shared_contiguous(c, train=train) is runs, (kw, train)
