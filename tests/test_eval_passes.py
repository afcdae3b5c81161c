"""Evaluation in micro-batches (``config.eval.micro_batch``): each program runs its batch as
consecutive passes of a few rows, which keeps long sequences' attention in cache on a CPU.
The passes must not change a score: the rows, their samples and the sums are the same."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import train
from tests import helpers


def test_automatic_pass_size_on_cpu():
  assert jax.default_backend() == "cpu"
  c = helpers.config("sinusoidal")
  rows = lambda batch, padded: train.eval_micro_batch(c, batch, padded)
  assert train.EVAL_PASS_TOKENS == 1024
  # The largest divisor of the batch with at most 1024 tokens, and 2 rows at the least.
  assert rows(128, 1000) == 2 and rows(8, 1000) == 2
  assert rows(128, 130) == 4      # 1024 // 130 = 7 -> divisor 4
  assert rows(128, 34) == 16      # 30 -> 16
  assert rows(6, 300) == 3        # 3 divides 6
  assert rows(7, 300) == 1        # 7 has no divisor in 2..3
  assert rows(1, 1000) == 1 and rows(4, 8) == 4
  c.eval.micro_batch = 2
  assert rows(128, 34) == 2


def test_passes_add_up_to_the_whole_batch():
  batch = {"x": jnp.arange(24.0).reshape(6, 4), "shared": jnp.ones((1, 4)), "length": jnp.int32(3)}

  def stats(rows):
    assert rows["shared"].shape == (1, 4) and rows["length"].shape == ()
    w = jnp.arange(1.0, 5.0)
    return jnp.stack([jnp.sum(rows["x"] * w * rows["shared"]), jnp.sum(rows["x"] ** 2),
                      rows["length"] * rows["x"].shape[0]])

  whole = np.asarray(stats(batch))
  for micro in (1, 2, 3):
    got = np.asarray(jax.jit(lambda b, m=micro: train.over_micro_batches(stats, b, 6, m))(batch))
    np.testing.assert_allclose(got, whole, rtol=1e-6)


def _scores(scheme: str, micro: int, **overrides):
  c = helpers.config(scheme, **{"eval.samples_per_length": 4, "eval.batch_size": 4,
                                "eval.micro_batch": micro, **overrides})
  s = train.setup(c)
  keys = train.root_keys(c.seed)
  state = train.init_state(s, keys["init"])
  assert train.eval_micro_batch(c, 4, max(p for _, p in s.eval_buckets)) == micro
  return train.evaluate(s, state["params"], keys["eval"], log=None, greedy=bool(c.eval.greedy))


@pytest.mark.parametrize("scheme,overrides", [
    # a decoder with greedy decoding and per-example (randomized) positions, [B, P]
    ("sinusoidal", {"model.causal": True, "eval.greedy": True, "positions.kind": "randomized"}),
    # FLOATER: its solved table reaches every pass through the evaluation cache
    ("floater", {}),
])
def test_passes_give_the_same_scores(scheme, overrides):
  whole = _scores(scheme, 4, **overrides)
  passes = _scores(scheme, 1, **overrides)
  whole, passes = (x if isinstance(x, tuple) else (x,) for x in (whole, passes))
  for a, b in zip(whole, passes):
    assert a.keys() == b.keys()
    np.testing.assert_allclose([b[k] for k in a], [a[k] for k in a], rtol=1e-6, atol=1e-7)
  values = list(whole[0].values())
  assert any(0.0 < v < 1.0 for v in values), values  # scores that can tell a wrong sum apart


def test_pass_size_leaves_the_config_hash_alone():
  """Scores do not depend on it, so neither do workdir names and DONE markers: runs and sweeps
  made before the field existed are still found complete."""
  c = helpers.config("sinusoidal")
  h = train.config_hash(c)
  c.eval.micro_batch = 2
  assert train.config_hash(c) == h
  with c.eval.unlocked():
    del c.eval["micro_batch"]
  assert train.config_hash(c) == h
  c.eval.batch_size = 2
  assert train.config_hash(c) != h
