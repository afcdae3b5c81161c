"""experiments/aggregates.py on hand-made numbers with known answers, ties included."""

from __future__ import annotations

import pytest

from experiments import aggregates


def test_mean_reciprocal_rank_with_a_tie():
  # task1: a > b > c (1, 1/2, 1/3); task2: c first, a and b tied over ranks 2 and 3.
  scores = {"a": {"t1": [0.9], "t2": [0.2]}, "b": {"t1": [0.5], "t2": [0.2]},
            "c": {"t1": [0.1], "t2": [0.8]}}
  avg = aggregates.mean_reciprocal_rank(scores, ["a", "b", "c"])
  assert avg == pytest.approx({"a": (1 + 1 / 2.5) / 2, "b": (0.5 + 1 / 2.5) / 2,
                               "c": (1 / 3 + 1) / 2})
  low = aggregates.mean_reciprocal_rank(scores, ["a", "b", "c"], ties="min")
  assert low == pytest.approx({"a": 0.75, "b": 0.5, "c": (1 / 3 + 1) / 2})
  # Ranks are among the schemes asked for: a and b alone.
  assert aggregates.mean_reciprocal_rank(scores, ["a", "b"]) == pytest.approx(
      {"a": (1 + 1 / 1.5) / 2, "b": (0.5 + 1 / 1.5) / 2})


def test_seeds_ranked_separately_or_averaged_first():
  scores = {"a": {"t": [1.0, 0.0]}, "b": {"t": [0.4, 0.6]}}
  # seed 0: a first; seed 1: b first.
  assert aggregates.mean_reciprocal_rank(scores, ["a", "b"]) == pytest.approx(
      {"a": 0.75, "b": 0.75})
  # means 0.5 and 0.5: a tie for first.
  assert aggregates.mean_reciprocal_rank(scores, ["a", "b"], seeds="mean") == pytest.approx(
      {"a": 1 / 1.5, "b": 1 / 1.5})
  assert aggregates.mean_reciprocal_rank(scores, ["a", "b"], seeds="mean", ties="min") == {
      "a": 1.0, "b": 1.0}
  # Unequal seed counts: ranking by seed index is undefined; their means still rank.
  uneven = {"a": {"t": [1.0, 0.0, 0.8]}, "b": {"t": [0.4, 0.6]}}
  with pytest.raises(ValueError, match="seed counts differ"):
    aggregates.mean_reciprocal_rank(uneven, ["a", "b"])
  assert aggregates.mean_reciprocal_rank(uneven, ["a", "b"], seeds="mean") == {"a": 1.0, "b": 0.5}


def test_the_five_by_default_and_their_reciprocal_ranks_sum():
  five = aggregates.KAZEMNEJAD_SCHEMES
  assert five == ("none", "t5", "alibi", "rope", "sinusoidal")
  values = {"none": [0.9, 0.8], "t5": [0.7, 0.9], "alibi": [0.5, 0.1], "rope": [0.3, 0.2],
            "sinusoidal": [0.1, 0.3]}
  scores = {s: {"copy": v, "sorting": v[::-1]} for s, v in values.items()}
  scores["learned"] = {"copy": [1.0, 1.0], "sorting": [1.0, 1.0]}  # not one of the five
  mrr = aggregates.mean_reciprocal_rank(scores)
  assert list(mrr) == list(five)
  # no ties: every scenario's reciprocal ranks add to 1 + 1/2 + ... + 1/5
  assert sum(mrr.values()) == pytest.approx(sum(1 / r for r in range(1, 6)))
  # none: copy ranks 1, 2; sorting 2, 1 -> (1 + 1/2 + 1/2 + 1) / 4
  assert mrr["none"] == pytest.approx(0.75)
  # all five tied at 0: each gets 1/3 (the mean rank 3) with average ties, 1 with min
  zeros = {s: {"copy": [0.0]} for s in five}
  assert list(aggregates.mean_reciprocal_rank(zeros).values()) == pytest.approx([1 / 3] * 5)
  assert set(aggregates.mean_reciprocal_rank(zeros, ties="min").values()) == {1.0}


def test_mean_reciprocal_rank_refuses_bad_input():
  with pytest.raises(ValueError, match="no scores for scheme"):
    aggregates.mean_reciprocal_rank({"none": {"copy": [1.0]}})
  with pytest.raises(ValueError, match="has no scores for task"):
    aggregates.mean_reciprocal_rank({"a": {"t": [1.0], "u": [0.0]}, "b": {"t": [0.5]}}, ["a", "b"])
  with pytest.raises(ValueError, match="NaN"):
    aggregates.mean_reciprocal_rank({"a": {"t": [float("nan")]}, "b": {"t": [0.5]}}, ["a", "b"])
  with pytest.raises(ValueError, match="ties"):
    aggregates.mean_reciprocal_rank({"a": {"t": [1.0]}}, ["a"], ties="max")


def test_randomized_gain():
  plain = {"t1": 0.5, "t2": [0.2, 0.4]}   # t2: mean over seeds 0.3
  randomized = {"t1": 0.8, "t2": [0.3]}
  g = aggregates.randomized_gain(plain, randomized)
  assert g["per_task"]["t1"] == pytest.approx(
      {"plain": 0.5, "randomized": 0.8, "absolute_points": 30.0, "relative": 0.6})
  assert g["per_task"]["t2"]["absolute_points"] == pytest.approx(0.0, abs=1e-12)
  assert g["absolute_points"] == pytest.approx(15.0)
  assert g["relative"] == pytest.approx(0.3)
  assert g["relative_of_means"] == pytest.approx((0.55 - 0.4) / 0.4)
  assert "not known" in g["definition"] and "points" in g["definition"]
  # a loss counts negative; a plain score of 0 has no relative gain and leaves that mean
  g = aggregates.randomized_gain({"a": 0.0, "b": 0.6}, {"a": 0.5, "b": 0.3})
  assert g["per_task"]["a"]["relative"] is None
  assert g["absolute_points"] == pytest.approx((50 - 30) / 2)
  assert g["relative"] == pytest.approx(-0.5)
  with pytest.raises(ValueError, match="tasks differ"):
    aggregates.randomized_gain({"a": 0.1}, {"b": 0.2})
