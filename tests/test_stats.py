"""experiments.stats: bootstrap intervals, who learned, best and tied-best, on hand-made values."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import stats
from posenc import ranges


def _cell(values, learned=True):
  values = dict(enumerate(values))
  flags = learned if isinstance(learned, (list, tuple)) else [learned] * len(values)
  return stats.cell(values, dict(enumerate(flags)))


# ----------------------------------------------------------------------------- intervals


def test_interval_of_identical_values_has_zero_width_and_one_value_is_itself():
  assert stats.bootstrap_interval([0.9] * 5) == (0.9, 0.9)
  assert stats.bootstrap_interval([0.3]) == (0.3, 0.3)
  c = _cell([0.9] * 5)
  assert (c.mean, c.lo, c.hi, c.max) == (pytest.approx(0.9), 0.9, 0.9, 0.9)


def test_interval_is_deterministic_inside_the_range_and_close_to_the_normal_one():
  rng = np.random.default_rng(0)
  x = rng.normal(0.6, 0.1, size=40)
  lo, hi = stats.bootstrap_interval(x)
  assert (lo, hi) == stats.bootstrap_interval(list(x))  # same values, same bytes
  assert x.min() <= lo < x.mean() < hi <= x.max()
  half = 1.96 * x.std(ddof=1) / np.sqrt(x.size)  # the normal approximation, for 40 values
  assert abs((hi - lo) / 2 - half) < 0.15 * half
  # With n ≤ 3 seeds the 95% percentile interval is the values' range.
  assert stats.bootstrap_interval([0.2, 0.5]) == (0.2, 0.5)
  assert stats.bootstrap_interval([0.2, 0.5, 0.3]) == pytest.approx((0.2, 0.5))
  with pytest.raises(ValueError, match="no values"):
    stats.bootstrap_interval([])
  with pytest.raises(ValueError, match="NaN"):
    stats.bootstrap_interval([0.1, float("nan")])


def test_paired_difference_pairs_by_seed_number():
  a = {0: 0.9, 1: 0.8, 2: 0.95, 3: 0.85, 4: 0.9}
  b = {4: 0.5, 3: 0.45, 2: 0.55, 1: 0.4, 0: 0.5, 7: 0.99}  # seed 7 has no partner
  p = stats.paired_difference(a, b)
  assert p.n == 5 and p.mean == pytest.approx(0.4) and p.lo > 0 and p.separated
  # Pairing matters: a shared per-seed offset cancels in the difference.
  offset = {s: 0.1 * s for s in range(6)}
  up = {s: 0.5 + offset[s] + 0.01 for s in range(6)}
  down = {s: 0.5 + offset[s] for s in range(6)}
  assert stats.paired_difference(up, down).separated
  assert not (stats.bootstrap_interval(list(up.values()))[0]
              > stats.bootstrap_interval(list(down.values()))[1])  # the unpaired intervals overlap
  # Too few pairs separate nothing, however far apart.
  assert not stats.paired_difference({0: 1.0, 1: 1.0, 2: 1.0}, {0: 0.0, 1: 0.0, 2: 0.0}).separated
  assert stats.paired_difference({0: 1.0}, {1: 0.0}) == stats.Paired(0, None, None, None)


# ----------------------------------------------------------------------------- learned


def test_top_quarter_of_the_training_lengths():
  assert stats.top_quarter([1, 12]) == (10, 12)
  assert stats.top_quarter([1, 3]) == (3, 3)  # at least one length
  assert stats.top_quarter([1, 40]) == (31, 40)
  assert stats.top_quarter([5, 5]) == (5, 5)
  # n not a multiple of 4: a quarter rounds up, as the criterion's check does (k = ceil(n/4))
  assert stats.top_quarter([1, 5]) == (4, 5)
  assert stats.top_quarter([1, 14]) == (11, 14)
  with pytest.raises(ValueError, match="empty"):
    stats.top_quarter([4, 3])


def test_top_quarter_is_the_criterions_rule_and_stats_imports_no_jax():
  """stats and posenc.criterion share posenc.ranges.top_lengths; stats stays JAX-free."""
  for lo in (1, 2, 7):
    for hi in range(lo, lo + 45):
      top = ranges.top_lengths(lo, hi)  # the criterion's default top_fraction 0.25
      assert stats.top_quarter([lo, hi]) == (top[0], top[-1])
      n, k = hi - lo + 1, len(top)
      assert top == list(range(hi - k + 1, hi + 1)) and k == max(1, -(-n // 4))
  assert ranges.top_lengths(1, 12, 1.0) == list(range(1, 13))
  assert ranges.top_lengths(1, 12, 0.01) == [12]
  assert len(ranges.top_lengths(1, 25, 0.28)) == 7  # 25 × 0.28 = 7.000000000000001 -> 7, not 8
  with pytest.raises(ValueError, match="fraction"):
    ranges.top_lengths(1, 4, 0.0)
  code = ("import sys, experiments.stats, posenc.ranges; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"


def test_point_learned_from_criterion_greedy_or_accuracy():
  per_length = {str(l): 1.0 for l in range(1, 10)} | {"10": 0.9, "11": 0.97, "12": 0.98, "20": 0.1}
  base = {"train_range": [1, 12], "per_length": per_length}
  assert stats.point_learned(base) == (True, "accuracy ≥ 0.95 at lengths 10–12")  # mean 0.95
  low = {**base, "per_length": {**per_length, "12": 0.9}}
  assert stats.point_learned(low)[0] is False
  greedy = {**base, "greedy": {"per_length_exact_match": {"10": 0.5, "11": 0.6, "12": 0.7}}}
  assert stats.point_learned(greedy) == (False, "greedy exact match ≥ 0.95 at lengths 10–12")
  # The run's own criterion wins over both.
  decided = {**greedy, "criterion": {"learned": True, "step": 400, "threshold": 0.9,
                                     "metric": "exact_match", "lengths": [10, 11, 12], "curve": []}}
  assert stats.point_learned(decided) == (
      True, "criterion: greedy exact match ≥ 0.9 at lengths 10–12")
  one = {**base, "criterion": {**decided["criterion"], "metric": "accuracy", "lengths": [6]}}
  assert stats.point_learned(one) == (True, "criterion: per-token accuracy ≥ 0.9 at length 6")
  assert stats.point_learned({**one, "mode": "decoder"}) == (
      True, "criterion: teacher-forced per-token accuracy ≥ 0.9 at length 6")
  assert stats.point_learned({**decided, "mode": "decoder"})[1].startswith(
      "criterion: greedy exact match")
  # a block that does not say how it decided is still the run's decision
  assert stats.point_learned({**base, "criterion": {"learned": False, "step": None}}) == (
      False, "criterion")
  with pytest.raises(ValueError, match="boolean 'learned'"):
    stats.point_learned({**base, "criterion": {"learned": "yes"}})
  assert stats.point_learned({**base, "lm": {}}) == (None, "language modelling")
  assert stats.point_learned({"per_length": per_length}) == (None, "no training range")
  assert stats.point_learned({"train_range": [1, 12], "per_length": {"30": 1.0}}) == (
      None, "no accuracy at lengths 10–12")
  nan = {"train_range": [1, 4], "per_length": {"4": None, "3": 1.0}}
  assert stats.point_learned(nan) == (None, "no accuracy at length 4")


# ----------------------------------------------------------------------------- ranking


def test_clearly_apart_cells_are_separated_and_the_top_is_best():
  col = stats.rank_column({"good": _cell([0.9] * 5), "bad": _cell([0.5] * 5)}, chance=0.0)
  assert col.marks == {"good": "best"} and col.ranks == {"good": "1", "bad": "2"}
  assert col.note == ""


def test_overlapping_noisy_cells_tie():
  a = _cell([0.80, 0.62, 0.91, 0.70, 0.75])
  b = _cell([0.72, 0.85, 0.66, 0.80, 0.69])
  c = _cell([0.30, 0.25, 0.35, 0.28, 0.31])
  col = stats.rank_column({"a": a, "b": b, "c": c}, chance=0.0)
  assert a.rank_mean > b.rank_mean
  assert col.marks == {"a": "tied", "b": "tied"}
  assert col.ranks == {"a": "1=", "b": "1=", "c": "3"}
  # Only these two: all learned schemes tie -> no best mark, still ranked.
  col = stats.rank_column({"a": a, "b": b}, chance=0.0)
  assert col.marks == {} and col.note == "all learned schemes tie" and col.ranks == {"a": "1=", "b": "1="}


def test_a_cell_where_fewer_than_half_learned_is_shown_but_not_ranked():
  partial = _cell([0.99] * 5, learned=[True, True, False, False, False])
  assert (partial.n_learned, partial.total, partial.ranked) == (2, 5, False)
  assert partial.mean == pytest.approx(0.99)  # shown: over every seed
  half = _cell([0.6, 0.6, 0.6, 0.6], learned=[True, True, False, False])
  assert half.ranked and half.rank_values == {0: 0.6, 1: 0.6}
  col = stats.rank_column({"partial": partial, "rest": _cell([0.7] * 5), "low": _cell([0.4] * 5)})
  assert "partial" not in col.ranks and col.marks == {"rest": "best"}
  # Ranking statistics use the learned seeds only.
  mixed = _cell([0.9, 0.8, 0.1], learned=[True, True, False])
  assert mixed.mean == pytest.approx(0.6) and mixed.rank_mean == pytest.approx(0.85)


def test_no_best_mark_on_a_chance_level_column_or_without_learned_cells():
  near = {"a": _cell([0.53, 0.54, 0.52, 0.55, 0.53]), "b": _cell([0.50] * 5)}
  col = stats.rank_column(near, chance=0.5)
  assert col.marks == {} and "clearly above chance" in col.note
  assert col.ranks == {"a": "1", "b": "2"}  # separated, but neither beats chance clearly
  assert stats.rank_column(near, chance=0.0).marks == {"a": "best"}
  none = stats.rank_column({"a": _cell([0.9] * 4, learned=False)}, chance=0.0)
  assert none.marks == {} and none.ranks == {} and "half its seeds" in none.note


def test_two_seeds_separate_only_when_their_ranges_do_not_overlap():
  top, close, far = _cell([0.90, 0.94]), _cell([0.88, 0.92]), _cell([0.5, 0.6])
  col = stats.rank_column({"top": top, "close": close, "far": far}, chance=0.0)
  assert col.marks == {"top": "tied", "close": "tied"} and col.ranks["far"] == "3"
  assert stats.rank_column({"top": top, "far": far}).marks == {"top": "best"}
