"""Statistics over seeds for ``experiments.collect``: intervals, who learned, who is best.

A *cell* is one scheme row × task × metric, its values one per seed. For each cell:

* the **mean** over seeds and its **95% percentile-bootstrap interval** (``RESAMPLES``
  resamples of the seeds with replacement, a fixed numpy seed: the same values give the same
  interval, so a report rebuilds byte for byte). With n seeds the interval cannot reach past
  the values' range; for n ≤ 3 it *is* their range (a resample of one seed repeated n times has
  probability n^(1−n) ≥ 2.5%), so with 2 seeds read it as "where the two seeds fell";
* the **maximum** over seeds (the papers' aggregate);
* **learned / total**: how many seeds learned the task in range (:func:`point_learned`).

**Ranking** (:func:`rank_column`) uses learned points only: a cell where fewer than half the
seeds learned is shown but not ranked, and a ranked cell's statistics are over its learned
seeds. Ranked cells are taken by mean, highest first; a cell is *separated* from a higher one
when

* a **paired bootstrap** over the seeds both learned (paired by seed number; at least
  ``MIN_PAIRED_SEEDS``, the fewest for which a 95% percentile interval is more than the range of
  the differences) gives a 95% interval of the mean difference that excludes 0, or
* the two cells' own 95% intervals do not overlap.

The highest remaining cell and every cell not separated from it form one rank group (ranks
"1", "2=", ...: competition ranking, ``=`` marking a tie). The top group is the column's
**best** (one cell) or **tied-best** (several) — unless no ranked cell's interval lies clearly
above chance (its lower end at least ``CHANCE_MARGIN`` of the way from chance to 1), or every
ranked cell ties: then the column has no best mark.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from posenc.ranges import top_lengths

RESAMPLES = 10_000
LEVEL = 0.95
BOOTSTRAP_SEED = 20_240_501  # any fixed value: the intervals depend on it and on the values only
LEARNED_THRESHOLD = 0.95  # in-range score (top quarter of the training lengths) that counts as learned
TOP_FRACTION = 0.25  # "top quarter": posenc's default criterion.top_fraction
MIN_PAIRED_SEEDS = 4  # n^(1-n) < (1 - LEVEL) / 2 first holds at n = 4
CHANCE_MARGIN = 0.1  # "clearly above chance": lower end ≥ chance + 0.1 × (1 − chance)


# ----------------------------------------------------------------------------- learned


def top_quarter(train_range: Sequence[int]) -> tuple[int, int]:
  """The top quarter of the training lengths ``[lo, hi]`` as ``(first, last)``: the lengths a
  run's criterion checks with its default ``top_fraction`` 0.25, by the same rule
  (:func:`posenc.ranges.top_lengths`: the last ``k = max(1, ceil(n / 4))`` of the ``n``
  lengths). E.g. 1–12 → 10–12, 1–5 → 4–5, 1–3 → 3–3."""
  lo, hi = (int(x) for x in train_range)
  if hi < lo:
    raise ValueError(f"training range {lo}–{hi} is empty")
  top = top_lengths(lo, hi, TOP_FRACTION)
  return top[0], top[-1]


def learned_from_lengths(per_length: Mapping[int, float] | None, train_range: Sequence[int],
                         threshold: float = LEARNED_THRESHOLD) -> bool | None:
  """Whether the mean score over the evaluated lengths in :func:`top_quarter` is ≥ ``threshold``
  (NaN scores left out); None where no such length has a score."""
  if not per_length:
    return None
  lo, hi = top_quarter(train_range)
  scores = [float(v) for length, v in per_length.items()
            if lo <= int(length) <= hi and v is not None and not math.isnan(float(v))]
  if not scores:
    return None
  return float(np.mean(scores)) >= threshold


_CRITERION_METRICS = {"accuracy": "per-token accuracy", "exact_match": "greedy exact match"}


def criterion_text(criterion: Mapping[str, Any], decoder: bool = False) -> str:
  """How a run's own criterion decided, from its ``results.json`` block: e.g. ``criterion:
  per-token accuracy ≥ 0.95 at lengths 10–12`` (a ``decoder``'s accuracy is teacher-forced, and
  says so); just ``criterion`` where the block does not say (the metric, threshold or lengths
  missing)."""
  metric, threshold = criterion.get("metric"), criterion.get("threshold")
  lengths = criterion.get("lengths")
  if (metric not in _CRITERION_METRICS or not isinstance(threshold, (int, float))
      or not isinstance(lengths, (list, tuple)) or not lengths):
    return "criterion"
  name = _CRITERION_METRICS[metric]
  if decoder and metric == "accuracy":
    name = "teacher-forced " + name
  return (f"criterion: {name} ≥ {threshold:g} at "
          f"{_span(min(lengths), max(lengths))}")


def _span(lo: int, hi: int) -> str:
  return f"length {lo}" if lo == hi else f"lengths {lo}–{hi}"


def point_learned(results: Mapping[str, Any]) -> tuple[bool | None, str]:
  """Whether one run learned its task in range, and how that was decided.

  ``results["criterion"]["learned"]`` where ``results.json`` has a ``criterion`` block (the run
  decided); otherwise :func:`learned_from_lengths` over greedy exact match
  (``results["greedy"]["per_length_exact_match"]``) for decoders that decoded greedily, else over
  ``results["per_length"]``. None (with the reason) where neither can tell: a language-modelling
  run, no training range, or no evaluated length in the top quarter. A malformed ``criterion``
  is a ValueError.
  """
  criterion = results.get("criterion")
  if criterion is not None:
    if not isinstance(criterion, Mapping) or not isinstance(criterion.get("learned"), bool):
      raise ValueError(f"criterion must be an object with a boolean 'learned', got {criterion!r}")
    return criterion["learned"], criterion_text(criterion, results.get("mode") == "decoder")
  if isinstance(results.get("lm"), Mapping):
    return None, "language modelling"
  train_range = results.get("train_range")
  if not train_range or len(train_range) != 2:
    return None, "no training range"
  greedy = results.get("greedy") or {}
  if greedy.get("per_length_exact_match"):
    per_length, metric = greedy["per_length_exact_match"], "greedy exact match"
  else:
    per_length, metric = results.get("per_length"), "accuracy"
  lo, hi = top_quarter(train_range)
  values = {int(k): (float("nan") if v is None else float(v)) for k, v in (per_length or {}).items()}
  learned = learned_from_lengths(values, (train_range[0], train_range[1]))
  if learned is None:
    return None, f"no {metric} at {_span(lo, hi)}"
  return learned, f"{metric} ≥ {LEARNED_THRESHOLD:g} at {_span(lo, hi)}"


# ----------------------------------------------------------------------------- intervals


def bootstrap_interval(values: Sequence[float], level: float = LEVEL,
                       resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
  """The percentile-bootstrap ``level`` interval of the mean of ``values``.

  Deterministic: the resampling draws from ``np.random.default_rng(seed)``, fresh per call. One
  value, or identical values, give a zero-width interval at that value.
  """
  x = np.asarray([float(v) for v in values], dtype=float)
  if x.size == 0:
    raise ValueError("no values")
  if np.any(np.isnan(x)):
    raise ValueError("values contain NaN")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  if x.size == 1 or np.all(x == x[0]):
    return float(x[0]), float(x[0])
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
  alpha = (1 - level) / 2
  lo, hi = np.quantile(means, [alpha, 1 - alpha])
  return max(float(lo), float(x.min())), min(float(hi), float(x.max()))


@dataclasses.dataclass(frozen=True)
class Paired:
  """A paired comparison of two cells over their common seeds: a − b."""

  n: int  # common seeds
  mean: float | None  # mean difference (None: no common seed)
  lo: float | None
  hi: float | None

  @property
  def separated(self) -> bool:
    """Enough pairs and a 95% interval of the mean difference that excludes 0."""
    return (self.n >= MIN_PAIRED_SEEDS and self.lo is not None
            and (self.lo > 0 or self.hi < 0))


def paired_difference(a: Mapping[Any, float], b: Mapping[Any, float], level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Paired:
  """The bootstrap interval of the mean of ``a[s] − b[s]`` over the seeds ``s`` both have."""
  common = sorted(set(a) & set(b))
  if not common:
    return Paired(0, None, None, None)
  diffs = [float(a[s]) - float(b[s]) for s in common]
  lo, hi = bootstrap_interval(diffs, level, resamples, seed)
  return Paired(len(common), float(np.mean(diffs)), lo, hi)


# ----------------------------------------------------------------------------- cells


@dataclasses.dataclass(frozen=True)
class Cell:
  """One scheme × task × metric over seeds."""

  values: dict[Any, float]  # seed -> value (seeds with a value)
  learned: dict[Any, bool | None]  # seed -> learned in range (every seed of the cell)
  mean: float | None
  lo: float | None  # 95% bootstrap interval of the mean
  hi: float | None
  max: float | None
  rank_values: dict[Any, float]  # the learned seeds' values: what ranking uses
  rank_mean: float | None
  rank_lo: float | None
  rank_hi: float | None

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def total(self) -> int:
    return len(self.learned)

  @property
  def n_learned(self) -> int:
    return sum(1 for v in self.learned.values() if v)

  @property
  def mostly_learned(self) -> bool:
    """At least half the seeds learned (a cell without seeds did not)."""
    return self.total > 0 and 2 * self.n_learned >= self.total

  @property
  def ranked(self) -> bool:
    return self.mostly_learned and bool(self.rank_values)


def cell(values: Mapping[Any, float | None], learned: Mapping[Any, bool | None]) -> Cell:
  """A :class:`Cell` from per-seed values (None or NaN: missing) and per-seed ``learned``.

  Keys are seeds (an int, or any sortable key that pairs seeds across cells, e.g. a seed and
  folded settings). ``learned`` names every seed of the cell (its keys are the total); a value's
  seed missing from it counts as a seed that did not learn.
  """
  vals = {s: float(v) for s, v in values.items() if v is not None and not math.isnan(float(v))}
  seeds_learned = dict(learned)
  for s in vals:
    seeds_learned.setdefault(s, None)
  ranked = {s: v for s, v in vals.items() if seeds_learned.get(s)}

  def summary(d):
    if not d:
      return None, None, None
    lo, hi = bootstrap_interval([d[s] for s in sorted(d)])
    return float(np.mean([d[s] for s in sorted(d)])), lo, hi

  mean, lo, hi = summary(vals)
  rank_mean, rank_lo, rank_hi = summary(ranked)
  return Cell(values=dict(sorted(vals.items())), learned=dict(sorted(seeds_learned.items())),
              mean=mean, lo=lo, hi=hi, max=max(vals.values()) if vals else None,
              rank_values=dict(sorted(ranked.items())), rank_mean=rank_mean, rank_lo=rank_lo,
              rank_hi=rank_hi)


def separated(upper: Cell, lower: Cell) -> bool:
  """Whether ``upper`` (the higher ranked mean) is told apart from ``lower``: a paired bootstrap
  over their common learned seeds (≥ ``MIN_PAIRED_SEEDS``) excludes 0, or their intervals over
  learned seeds do not overlap."""
  if upper.rank_lo is None or lower.rank_hi is None:
    raise ValueError("both cells must be ranked")
  if upper.rank_lo > lower.rank_hi:
    return True
  return paired_difference(upper.rank_values, lower.rank_values).separated


@dataclasses.dataclass(frozen=True)
class Column:
  """One task's ranking over rows."""

  ranks: dict[str, str]  # ranked row -> "1", "1=", "3", ... (unranked rows absent)
  marks: dict[str, str]  # row -> "best" or "tied" (empty where the column has no best mark)
  note: str  # why the column has no best mark ("" where it has one)

  def best_rows(self) -> list[str]:
    return list(self.marks)


def rank_column(cells: Mapping[str, Cell], chance: float = 0.0,
                margin: float = CHANCE_MARGIN) -> Column:
  """Ranks (with ties) and best / tied-best marks of one column; see the module docstring.

  ``cells``: row name -> Cell (rows without a ranked cell are left unranked). ``chance``: the
  score of guessing (the column's floor).
  """
  order = sorted((r for r, c in cells.items() if c.ranked),
                 key=lambda r: (-cells[r].rank_mean, r))
  ranks: dict[str, str] = {}
  groups: list[list[str]] = []
  remaining = list(order)
  while remaining:
    leader = remaining[0]
    group = [leader] + [r for r in remaining[1:] if not separated(cells[leader], cells[r])]
    position = 1 + sum(len(g) for g in groups)
    for r in group:
      ranks[r] = f"{position}=" if len(group) > 1 else f"{position}"
    groups.append(group)
    remaining = [r for r in remaining if r not in group]
  if not order:
    return Column(ranks, {}, "no cell with at least half its seeds learned")
  floor = chance + margin * (1.0 - chance)
  if not any(cells[r].rank_lo >= floor for r in order):
    return Column(ranks, {}, f"no learned scheme clearly above chance: none whose interval starts at ≥ {100 * floor:.1f}%")
  top = groups[0]
  if len(order) > 1 and len(top) == len(order):
    return Column(ranks, {}, "all learned schemes tie")
  mark = "best" if len(top) == 1 else "tied"
  return Column(ranks, {r: mark for r in top}, "")
