"""Published aggregates, computed the way their papers compute them (as far as their text says).

* :func:`mean_reciprocal_rank`: Kazemnejad et al. (NeurIPS 2023), Figure 1 — the schemes ranked
  against each other by exact match, reciprocal ranks averaged (NoPE 0.69, T5 0.55, ALiBi 0.50,
  Rotary 0.33, APE 0.22 over their ten tasks).
* :func:`randomized_gain`: Ruoss et al. (ACL 2023) — what randomized positions add beyond the
  training lengths ("12.0% on average" in their abstract).

Both take plain numbers (e.g. each run's ``greedy.out_of_range_exact_match`` or
``out_of_range_score`` from its ``results.json``), so they apply to any set of runs.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# Kazemnejad et al.'s five, by posenc's scheme names: NoPE, T5's relative bias, ALiBi, Rotary,
# and APE (sinusoidal; their learned-table variant is not one of the five).
KAZEMNEJAD_SCHEMES = ("none", "t5", "alibi", "rope", "sinusoidal")
TIES = ("average", "min")


def _ranks(values: Sequence[float], ties: str) -> list[float]:
  """Rank 1 = highest value. ``average``: tied values share the mean of the ranks they span
  (fractional ranking); ``min``: they all get the best of those ranks (competition ranking)."""
  order = sorted(range(len(values)), key=lambda i: -values[i])
  ranks = [0.0] * len(values)
  i = 0
  while i < len(order):
    j = i
    while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
      j += 1
    shared = (i + j) / 2 + 1 if ties == "average" else i + 1
    for k in range(i, j + 1):
      ranks[order[k]] = shared
    i = j + 1
  return ranks


def mean_reciprocal_rank(scores: Mapping[str, Mapping[str, Sequence[float]]],
                         schemes: Sequence[str] | None = None, *, ties: str = "average",
                         seeds: str = "separate") -> dict[str, float]:
  """Kazemnejad et al.'s mean reciprocal rank of each scheme, higher is better.

  ``scores[scheme][task]`` is a list of scores, one per seed (in their paper: exact match of the
  whole answer on lengths beyond training; three seeds per task and scheme). ``schemes``: those
  ranked against each other (default: their five, :data:`KAZEMNEJAD_SCHEMES`); ranks depend on
  which schemes take part. Every scheme must have every task that any of them has.

  Definition used (the paper says only that it follows Liang et al. (2022) and reports "the mean
  ranking of models compared against each other for all tasks and scenarios", Figure 1 "mean
  reciprocal rank"; no formula is given, read in the paper's text, Sections 1 and 4):

  1. a *scenario* is one task and one seed index (``seeds="separate"``: scheme A's seed k is
     ranked against scheme B's seed k; every scheme then needs the same number of seeds on a
     task), or one task with each scheme's mean over its seeds (``seeds="mean"``);
  2. in each scenario the schemes are ranked by score, 1 = best; tied scores share the mean of
     the ranks they span (``ties="average"``: two schemes tied for first both get 1.5) or the
     best of them (``ties="min"``: both get 1);
  3. a scheme's value is the mean of 1 / rank over all scenarios (each scenario weighs the same;
     with equal seed counts, the mean over tasks of the mean over seeds).

  A check on the choice: their five values add up to 2.29, and with five schemes and no ties
  every scenario's reciprocal ranks add up to 1 + 1/2 + 1/3 + 1/4 + 1/5 = 2.283; average ranks
  keep that sum nearly (two tied last: 2/4.5 = 0.444 for 1/4 + 1/5 = 0.45), while ``min`` would
  raise it (two tied last: 2/4 = 0.5; three: 3/3 = 1 for 0.783), beyond the rounding
  (2.265-2.315) unless ties were rare, which exact match beyond training (several schemes at 0)
  makes unlikely. So the default is ``average``; ``min`` is there to compare.
  """
  if ties not in TIES:
    raise ValueError(f"ties={ties!r}: choose one of {TIES}")
  if seeds not in ("separate", "mean"):
    raise ValueError(f"seeds={seeds!r}: choose 'separate' (rank per task and seed index) or "
                     "'mean' (rank each task's mean over seeds)")
  schemes = list(KAZEMNEJAD_SCHEMES if schemes is None else schemes)
  if len(set(schemes)) != len(schemes) or not schemes:
    raise ValueError(f"schemes must be distinct and at least one, got {schemes}")
  missing = [s for s in schemes if s not in scores]
  if missing:
    raise ValueError(f"no scores for scheme(s) {missing}; have {sorted(scores)}")
  task_names = sorted({t for s in schemes for t in scores[s]})
  if not task_names:
    raise ValueError("no tasks to rank on")
  for s in schemes:
    lacking = [t for t in task_names if t not in scores[s] or len(scores[s][t]) == 0]
    if lacking:
      raise ValueError(f"scheme {s!r} has no scores for task(s) {lacking}")
    for t in task_names:
      if any(math.isnan(float(v)) for v in scores[s][t]):
        raise ValueError(f"scheme {s!r}, task {t!r}: a NaN score cannot be ranked")
  scenarios: list[list[float]] = []  # per scenario, each scheme's score in `schemes` order
  for t in task_names:
    if seeds == "mean":
      scenarios.append([float(np.mean([float(v) for v in scores[s][t]])) for s in schemes])
      continue
    counts = {s: len(scores[s][t]) for s in schemes}
    if len(set(counts.values())) != 1:
      raise ValueError(f"task {t!r}: seed counts differ {counts}; ranking per seed index needs "
                       "the same number for every scheme (or seeds='mean')")
    for k in range(counts[schemes[0]]):
      scenarios.append([float(scores[s][t][k]) for s in schemes])
  reciprocal = np.array([[1.0 / r for r in _ranks(values, ties)] for values in scenarios])
  return {s: float(reciprocal[:, i].mean()) for i, s in enumerate(schemes)}


def _mean_over_seeds(value) -> float:
  if isinstance(value, (int, float)):
    return float(value)
  values = [float(v) for v in value]
  if not values:
    raise ValueError("an empty list of seed scores")
  return float(np.mean(values))


GAIN_DEFINITION = (
    "absolute_points: mean over tasks of (randomized - plain) beyond-range accuracy, in "
    "points; relative: mean over tasks of (randomized - plain) / plain (tasks with plain "
    "= 0 left out); relative_of_means: (mean randomized - mean plain) / mean plain; each "
    "task's score is the mean over its seeds. Ruoss et al.'s own aggregation of their "
    "'12.0% on average' is not known.")


def randomized_gain(plain: Mapping[str, float | Sequence[float]],
                    randomized: Mapping[str, float | Sequence[float]]) -> dict:
  """What randomized positions add beyond the training lengths, per task and averaged.

  ``plain[task]``, ``randomized[task]``: a scheme's beyond-range accuracy in [0, 1] (a run's
  ``out_of_range_score``) without and with randomized positions, one number or a list over
  seeds (then their mean is used). Both must cover the same tasks.

  Returns ``{"per_task": {task: {"plain", "randomized", "absolute_points", "relative"}},
  "absolute_points", "relative", "relative_of_means", "definition"}``:

  * ``absolute_points``: the mean over tasks of (randomized − plain), in points (× 100);
  * ``relative``: the mean over tasks of (randomized − plain) / plain (a fraction; a task whose
    plain score is 0 has no relative gain, ``None``, and is left out of this mean);
  * ``relative_of_means``: (mean randomized − mean plain) / mean plain over the tasks.

  Ruoss et al.'s abstract says randomized positions increase test accuracy "by 12.0% on
  average"; how that number is aggregated (absolute points or relative, over which tasks,
  schemes, seeds and learning rates, maxima or means) is not known here (LITERATURE.md): compare
  it with these numbers only with that said.
  """
  if set(plain) != set(randomized):
    raise ValueError(f"the tasks differ: plain has {sorted(plain)}, randomized "
                     f"{sorted(randomized)}")
  if not plain:
    raise ValueError("no tasks")
  per_task = {}
  for t in sorted(plain):
    p, r = _mean_over_seeds(plain[t]), _mean_over_seeds(randomized[t])
    if math.isnan(p) or math.isnan(r):
      raise ValueError(f"task {t!r}: a NaN score")
    per_task[t] = {"plain": p, "randomized": r, "absolute_points": 100.0 * (r - p),
                   "relative": (r - p) / p if p != 0 else None}
  rel = [v["relative"] for v in per_task.values() if v["relative"] is not None]
  mean_p = float(np.mean([v["plain"] for v in per_task.values()]))
  mean_r = float(np.mean([v["randomized"] for v in per_task.values()]))
  return {
      "per_task": per_task,
      "absolute_points": float(np.mean([v["absolute_points"] for v in per_task.values()])),
      "relative": float(np.mean(rel)) if rel else None,
      "relative_of_means": (mean_r - mean_p) / mean_p if mean_p != 0 else None,
      "definition": GAIN_DEFINITION,
  }
