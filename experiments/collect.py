"""Tables and plots from any set of runs: every ``results.json`` under the given folders.

  python -m experiments.collect /work/sweep_runs                     # report in <dir>/report
  python -m experiments.collect runs/a runs/b --out=report --fold=train.learning_rate
  python -m experiments.collect experiments/atlas                    # heatmaps (its collect.json)

Writes to ``--out``:

* ``results.csv`` — one row per run (scheme, variant, task, seed, scores, path relative to
  the report folder, ...);
  ``results_per_length.csv`` — one row per run and evaluated length.
* ``results.md`` — two tables, rows schemes, columns tasks, each cell
  ``in-range / out-of-range`` accuracy in %: the best over seeds (each number its own
  maximum, as the papers report) and the mean ± std over seeds (sample std, n-1). Also printed.
  Language-modelling runs (``results.json`` with an ``lm`` block, posenc/tasks/lm.py) show bits
  per byte at the training length / mean over the longer lengths, lower is better (best = min).
* ``plots/<task>.png`` — accuracy against length, one line per scheme: the mean over seeds with a
  ±1 std band, training lengths shaded; ``plots/all_tasks.png`` — all tasks in one figure;
  ``plots/<task>_perplexity.png`` — perplexity against evaluation length for language-modelling
  runs (none without them).
* with ``--heatmap`` (or ``"heatmap": true`` in the first folder's ``collect.json``):
  ``heatmaps/<form>_<metric>.png`` — per model form (encoder, decoder), schemes × tasks, the
  mean over seeds beyond the training lengths beside the one in range, the colour scale fixed
  per task from chance (1 / output vocabulary) to 1; greedy exact match gets its own map
  (chance 0); each cell its mean and 95% bootstrap interval, hatched where fewer than half the
  seeds learned in range, best / tied-best cells boxed (experiments/stats.py). Their numbers
  (mean [interval], max, learned / seeds), a per-task **best** row, the chance row and a ranking
  table with ties open ``results.md``; with ``--baselines`` (or ``"baselines": true``) also the
  rules of experiments.baselines per task; with ``--aggregates`` (or ``"aggregates": true``) a
  section "Published aggregates, computed their way" (:func:`aggregates_markdown`).
* ``baselines.json`` (with ``--baselines``) — the rules' full scores per form and task, each with
  the SHA-256 of the config.json it was computed from: a later collect reads an entry back
  where that config is unchanged instead of scoring the rules again.
* ``results_cells.csv`` — one row per form, metric, scheme row, task and range: seeds, mean,
  95% bootstrap interval, max, seeds learned / seeds, rank and best / tied mark. ``results.csv``
  carries each run's ``learned`` (and how it was decided).

The report depends on the runs' files only: rows sorted, floats in fixed formats, paths
relative, PNGs without a version stamp (``PNG_METADATA``), stale PNGs removed; collecting the
same runs twice gives the same bytes (with the same matplotlib).

Runs that differ in anything other than the seed (model mode, positions kind, steps, preset,
learning rate, ...) become separate rows, labelled with what differs, named by section, e.g.
``rope [decoder]``, ``rope [randomized]``, ``floater [smoke]``, ``floater [train.batch_size=64]``
(the default contiguous positions and default preset are not named; what comes with the form or
preset is not repeated: :func:`label_runs`). Plots shade each distinct training range, named in
the legend, which sits below the panels. ``--fold=KEY,...`` treats those keys as further seeds instead (the papers' maximum over
seeds *and* learning rates: ``--fold=train.learning_rate``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from absl import app, flags

from experiments import aggregates as agg
from experiments import stats as st

_OUT = flags.DEFINE_string("out", None, "Report folder (default: <first RUNS_DIR>/report).")
_FOLD = flags.DEFINE_list("fold", [], "Config keys whose values count as further seeds, "
                          "e.g. train.learning_rate.")
_BASELINES = flags.DEFINE_bool(
    "baselines", None, "With heatmaps, also score the rules of experiments.baselines (chance, "
    "position-free rules) on one point's evaluation samples per form and task and show them under "
    "each heatmap's table. Default: the first folder's collect.json, else off.")
_AGGREGATES = flags.DEFINE_bool(
    "aggregates", None, "With heatmaps, also compute the published aggregates their way "
    "(experiments.aggregates: Kazemnejad et al.'s mean reciprocal rank on the decoder's greedy "
    "exact match, the randomized-positions gain on the encoder's accuracy) in a section of "
    "results.md. Default: the first folder's collect.json, else off.")
_HEATMAP = flags.DEFINE_bool(
    "heatmap", None, "Also draw scheme × task heatmaps per model form (beyond-range and in-range "
    "mean over seeds, colour from chance to 1 per task; heatmaps/*.png) and put them with a "
    "best-scheme row at the top of results.md. Default: the first folder's collect.json, else off.")

# Config fields that never make two runs different experiments. ``plots`` (whether a run drew
# its figures) came later: runs made before it have no such field and must share rows with
# runs made after.
_IGNORED = ("seed", "workdir", "task.name", "encoding.name", "num_seeds", "init", "checkpoint",
            "train.log_every", "model.causal", "train.steps", "sweep", "plots")
_LEVEL_ORDER = {"R": 0, "DCF": 1, "CS": 2}
# PNG text chunks: matplotlib writes its version under "Software"; left out, the same figure
# gives the same bytes from any matplotlib that draws it the same (Agg writes no timestamp).
PNG_METADATA = {"Software": None}
# A folder collected may carry collect.json with the report's settings (flags given win).
SETTINGS_FILE = "collect.json"
SETTINGS = ("heatmap", "fold", "baselines", "aggregates")


@dataclasses.dataclass
class Run:
  """One finished run, as read from its workdir."""

  path: str
  scheme: str
  task: str
  seed: int
  in_range: float | None
  out_of_range: float | None
  per_length: dict[int, float]
  train_range: tuple[int, int]
  eval_range: tuple[int, int]
  attrs: dict[str, Any]  # what may distinguish it from other runs of its scheme and task
  per_length_perplexity: dict[int, float] | None = None  # language modelling only
  config_hash: str = ""
  label: str = ""
  variant: str = ""  # the label without the model form (rows of one form's heatmap)
  done: bool = True
  # Greedy decoding (decoders run with eval.greedy): exact match in range / beyond, per length.
  exact_in: float | None = None
  exact_out: float | None = None
  per_length_exact: dict[int, float] | None = None
  # Whether the run learned its task in range (experiments.stats.point_learned; None: cannot
  # tell, e.g. language modelling) and how that was decided.
  learned: bool | None = None
  learned_by: str = ""
  config_path: str = ""  # the config.json read ("" without one)
  pair: tuple = ()  # the seed and folded settings: what pairs this run with its peers in a cell

  @property
  def is_lm(self) -> bool:
    return bool(self.per_length_perplexity)


# ----------------------------------------------------------------------------- reading


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def _num(v) -> float | None:
  if v is None:
    return None
  v = float(v)
  return None if math.isnan(v) else v


def _lengths(d: dict | None) -> dict[int, float] | None:
  if not d:
    return None
  return {int(k): (float("nan") if v is None else float(v)) for k, v in d.items()}


def read_run(results_path: str) -> Run | None:
  """A run from its ``results.json`` (and ``config.json`` beside it, when present).

  A run with ``num_seeds = S > 1`` writes ``seeds/seed<k>/results.json`` per seed and their
  aggregate at the top: the per-seed files are the runs (config and DONE read from the run's
  folder), the aggregate is skipped (None) so no seed is counted twice.
  """
  wd = os.path.dirname(results_path)
  with open(results_path) as f:
    r = json.load(f)
  if int(r.get("num_seeds", 1)) > 1:
    return None
  run_dir = wd
  if os.path.basename(os.path.dirname(wd)) == "seeds":
    run_dir = os.path.dirname(os.path.dirname(wd))
  attrs: dict[str, Any] = {}
  config_path = os.path.join(run_dir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      attrs.update(_flat(json.load(f)))
  else:
    config_path = ""
  learned, learned_by = st.point_learned(r)
  attrs.update({"mode": r.get("mode", "encoder"), "preset": r.get("preset"), "steps": r.get("steps")})
  attrs = {k: v for k, v in attrs.items()
           if not any(k == i or k.startswith(i + ".") for i in _IGNORED)}
  train_range = tuple(r.get("train_range") or (0, 0))
  per_length = _lengths(r.get("per_length")) or {}
  is_lm = isinstance(r.get("lm"), dict)  # the LM task: per_length is perplexity, scores bits/byte
  greedy = r.get("greedy") or {}
  return Run(path=wd, scheme=r["scheme"], task=r["task"], seed=int(r.get("seed", 0)),
             in_range=_num(r.get("in_range_score")), out_of_range=_num(r.get("out_of_range_score")),
             per_length={} if is_lm else per_length, train_range=train_range,
             eval_range=tuple(r.get("eval_range") or (0, 0)), attrs=attrs,
             per_length_perplexity=per_length if is_lm else None,
             config_hash=r.get("config_hash", ""), done=os.path.exists(os.path.join(run_dir, "DONE")),
             exact_in=_num(greedy.get("in_range_exact_match")),
             exact_out=_num(greedy.get("out_of_range_exact_match")),
             per_length_exact=_lengths(greedy.get("per_length_exact_match")),
             learned=learned, learned_by=learned_by, config_path=config_path)


def find_runs(dirs: Sequence[str], log=print) -> list[Run]:
  """Every run under ``dirs`` (searched recursively for ``results.json``), sorted by path."""
  paths = []
  for d in dirs:
    if os.path.isfile(d) and os.path.basename(d) == "results.json":
      paths.append(d)
      continue
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{d!r} is not a folder")
    for root, subdirs, files in os.walk(d):
      subdirs[:] = sorted(s for s in subdirs
                          if s not in ("checkpoints", "plots", "tensorboard") and not s.startswith("."))
      if "results.json" in files:
        paths.append(os.path.join(root, "results.json"))
  runs = []
  for p in sorted(set(os.path.abspath(p) for p in paths)):
    try:
      run = read_run(p)
      if run is not None:
        runs.append(run)
    except (OSError, ValueError, KeyError, TypeError) as e:
      log(f"warning: skipping {p}: {type(e).__name__}: {e}")
  return runs


# ----------------------------------------------------------------------------- grouping


# Settings named by their value alone (the rest by their full key): the model form, the
# position sampler, the preset. Runs are compared among those sharing these values first.
_PRIMARY = ("mode", "positions.kind", "preset")


def _value_text(value: Any) -> str:
  if isinstance(value, tuple):
    return "[" + ",".join(_value_text(v) for v in value) + "]"
  if isinstance(value, bool):
    return str(value).lower()
  return str(value)


def _short(key: str, value: Any) -> str:
  """How a setting appears in a label: the form, sampler and preset by their value (the
  defaults, contiguous positions and the default preset, go without saying: ``rope`` beside
  ``rope [randomized]``), steps as ``N steps``, anything else as ``section.field=value``."""
  if key == "positions.kind" and value in ("contiguous", None):
    return ""
  if key == "preset" and value in ("default", None):
    return ""
  if key in _PRIMARY:
    return str(value)
  if key == "steps":
    return f"{value} steps"
  return f"{key}={_value_text(value)}"


def _scope(key: str, r: Run) -> str | None:
  """Among which runs a setting's values are compared: a scheme's options among runs of that
  scheme, a task's among runs of that task, anything else among all runs."""
  if key.startswith("encoding."):
    return "scheme:" + r.scheme
  if key.startswith("task."):
    return "task:" + r.task
  return None


def label_runs(runs: list[Run], fold: Iterable[str] = (), log=print) -> list[Run]:
  """Sets each run's row label; drops duplicates (same label, task, seed and folded values).

  A label is the scheme plus the settings that differ between the runs collected, each named by
  its section (``train.batch_size=64``; the form, positions and preset by their value:
  ``rope [decoder, randomized, smoke]``). A scheme's options are compared among runs of that
  scheme, a task's among runs of that task. A setting is named only on runs whose peers — the
  runs with the same form, positions kind and preset (and scheme or task, as above) — differ in
  it, so settings that come with the form (a decoder's pre-LN) or the preset (a smoke run's
  batch) are covered by it and not repeated. ``variant`` is the label without the form (the row
  name inside one form's heatmap). ``fold`` keys are never named: they count as further seeds.
  """
  fold = tuple(fold)
  keys = sorted(set().union(*(r.attrs for r in runs))) if runs else []
  varying = []
  for k in keys:
    if k in fold:
      continue
    values: dict[Any, set[str]] = {}
    for r in runs:
      values.setdefault(_scope(k, r), set()).add(repr(r.attrs.get(k)))
    if any(len(v) > 1 for v in values.values()):
      varying.append(k)
  primary = [k for k in _PRIMARY if k in varying]
  order = primary + [k for k in varying if k not in _PRIMARY]

  def peers(r: Run, k: str) -> tuple:
    return (_scope(k, r), *(repr(r.attrs.get(p)) for p in primary))

  named: dict[str, set[tuple]] = {}  # key -> the peer groups in which it differs
  for k in order:
    if k in primary:
      continue
    groups: dict[tuple, set[str]] = {}
    for r in runs:
      groups.setdefault(peers(r, k), set()).add(repr(r.attrs.get(k)))
    named[k] = {g for g, v in groups.items() if len(v) > 1}
  kept, seen = [], {}
  for r in runs:
    extra = [(k, _short(k, r.attrs.get(k))) for k in order
             if k in primary or peers(r, k) in named[k]]
    extra = [(k, text) for k, text in extra if text]
    r.label = r.scheme + (f" [{', '.join(t for _, t in extra)}]" if extra else "")
    variant = [t for k, t in extra if k != "mode"]
    r.variant = r.scheme + (f" [{', '.join(variant)}]" if variant else "")
    r.pair = (r.seed, *(repr(r.attrs.get(k)) for k in fold))
    key = (r.label, r.task, r.pair)
    if key in seen:
      log(f"warning: {r.path} repeats {seen[key]} (same scheme, task, seed and settings); "
          "keeping the first")
      continue
    seen[key] = r.path
    kept.append(r)
  return kept


def task_order(names: Iterable[str]) -> list[str]:
  """Tasks by Chomsky level (R, DCF, CS, then others), then by name."""
  try:
    from posenc import tasks
    levels = {n: c.level for n, c in tasks.registry().items()}
  except Exception:  # noqa: BLE001 — collecting needs no working library
    levels = {}
  return sorted(set(names), key=lambda n: (_LEVEL_ORDER.get(levels.get(n, ""), 3), n))


def stats(values: Sequence[float | None]) -> dict[str, float | int | None]:
  """max, mean, sample std (n-1; None for one value) and n over the non-missing values."""
  vals = [v for v in values if v is not None and not math.isnan(v)]
  if not vals:
    return {"max": None, "min": None, "mean": None, "std": None, "n": 0}
  return {"max": max(vals), "min": min(vals), "mean": float(np.mean(vals)),
          "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None, "n": len(vals)}


def cells(runs: list[Run]) -> dict[tuple[str, str], dict[str, dict]]:
  """``(label, task) -> {"in": stats, "out": stats, "lm": bool}`` over the seeds."""
  out: dict[tuple[str, str], list[Run]] = {}
  for r in runs:
    out.setdefault((r.label, r.task), []).append(r)
  result = {}
  for key, members in out.items():
    result[key] = {"in": stats([m.in_range for m in members]),
                   "out": stats([m.out_of_range for m in members]),
                   "lm": all(m.is_lm for m in members),
                   "exact_in": stats([m.exact_in for m in members]),
                   "exact_out": stats([m.exact_out for m in members])}
  return result


# ----------------------------------------------------------------------------- writing


def _pct(v: float | None, lm: bool) -> str:
  if v is None:
    return "–"
  return f"{v:.2f}" if lm else f"{100 * v:.1f}"


def markdown(runs: list[Run]) -> str:
  """Two Markdown tables (best over seeds; mean ± std), rows labels, columns tasks."""
  if not runs:
    return "_no runs found_\n"
  table = cells(runs)
  labels = sorted({r.label for r in runs})
  task_names = task_order(r.task for r in runs)
  counts = {c["in"]["n"] or c["out"]["n"] for c in table.values()}
  any_lm = any(c["lm"] for c in table.values())

  def best(c):
    if c["lm"]:  # perplexity: lower is better
      return f"{_pct(c['in']['min'], True)} / {_pct(c['out']['min'], True)}"
    return f"{_pct(c['in']['max'], False)} / {_pct(c['out']['max'], False)}"

  def mean(c):
    def one(s):
      if s["mean"] is None:
        return "–"
      text = _pct(s["mean"], c["lm"])
      return text + (f" ± {_pct(s['std'], c['lm'])}" if s["std"] is not None else "")
    n = c["in"]["n"] or c["out"]["n"]
    return f"{one(c['in'])} / {one(c['out'])}" + (f" (n={n})" if len(counts) > 1 else "")

  def grid(fn) -> list[str]:
    lines = ["| scheme | " + " | ".join(task_names) + " |",
             "|---|" + "---|" * len(task_names)]
    for label in labels:
      row = [fn(table[(label, t)]) if (label, t) in table else "" for t in task_names]
      lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines

  if len(counts) == 1:
    n = counts.pop()
    seeds = f"{n} seed{'s' if n != 1 else ''} per cell"
  else:
    seeds = "seeds per cell vary (n in each cell)"
  unit = "accuracy in %" + ("; language modelling: bits per byte at the training length / "
                            "mean over longer lengths, lower is better" if any_lm else "")
  span = lambda attr: ", ".join(f"{lo}–{hi}" for lo, hi in sorted({getattr(r, attr) for r in runs}))
  parts = [f"Each cell: in-range / out-of-range score, {unit}; {seeds}; {len(runs)} runs; "
           f"training lengths {span('train_range')}, evaluated lengths {span('eval_range')}; "
           "out-of-range = every evaluated length beyond the training lengths.", "",
           "**Best over seeds** (each number its own maximum over seeds"
           + ("; minimum for perplexity" if any_lm else "") + ")", "", *grid(best), "",
           "**Mean ± std over seeds** (sample std)", "", *grid(mean), ""]
  if any(r.exact_in is not None or r.exact_out is not None for r in runs):
    def exact(c):
      if not (c["exact_in"]["n"] or c["exact_out"]["n"]):
        return ""
      return mean({**c, "in": c["exact_in"], "out": c["exact_out"], "lm": False})
    parts += ["**Greedy exact match, mean ± std over seeds** (decoders run with "
              "`eval.greedy`: the whole answer decoded right, in %)", "", *grid(exact), ""]
  if any(not c["lm"] for c in table.values()):
    intervals = _interval_cells(runs)

    def interval(c, key):
      cell = intervals.get(key)
      if cell is None:
        return ""
      return (f"{_stat_text(cell)} max {_cell_pct(cell.max)} {cell.n_learned}/{cell.total}"
              + ("" if cell.mostly_learned else " not ranked"))

    lines = ["| scheme | " + " | ".join(task_names) + " |", "|---|" + "---|" * len(task_names)]
    for label in labels:
      lines.append(f"| {label} | " + " | ".join(interval(None, (label, t)) for t in task_names)
                   + " |")
    parts += ["**Out of range: mean [95% bootstrap interval] over seeds, maximum, seeds learned / "
              f"seeds** (in %; learned: the run's criterion, else ≥ {100 * st.LEARNED_THRESHOLD:g}% "
              "over the top quarter of the training lengths; per cell and metric in "
              "results_cells.csv)", "", *lines, ""]
  return "\n".join(parts)


def _interval_cells(runs: Sequence[Run]) -> dict[tuple[str, str], st.Cell]:
  """``(label, task) -> Cell`` of the out-of-range score over seeds (LM runs left out)."""
  groups: dict[tuple[str, str], list[Run]] = {}
  for r in runs:
    if not r.is_lm:
      groups.setdefault((r.label, r.task), []).append(r)
  return {key: st.cell({_pair(r): r.out_of_range for r in members},
                       {_pair(r): r.learned for r in members})
          for key, members in groups.items()}


def _relpath(path: str, out_dir: str) -> str:
  """``path`` relative to the report folder, with ``/`` (the same text wherever the tree lies)."""
  return os.path.relpath(path, os.path.abspath(out_dir)).replace(os.sep, "/")


def write_csv(runs: list[Run], out_dir: str, fold: Sequence[str] = ()) -> None:
  fields = ["label", "scheme", "task", "seed", "mode", "preset", "steps", *fold,
            "in_range_score", "out_of_range_score", "greedy_in_range_exact_match",
            "greedy_out_of_range_exact_match", "learned", "learned_by", "config_hash", "done",
            "path"]
  with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(fields)
    for r in runs:
      w.writerow([r.label, r.scheme, r.task, r.seed, r.attrs.get("mode"), r.attrs.get("preset"),
                  r.attrs.get("steps"), *(r.attrs.get(k) for k in fold),
                  "" if r.in_range is None else r.in_range,
                  "" if r.out_of_range is None else r.out_of_range,
                  "" if r.exact_in is None else r.exact_in,
                  "" if r.exact_out is None else r.exact_out,
                  "" if r.learned is None else int(r.learned), r.learned_by, r.config_hash, int(r.done), _relpath(r.path, out_dir)])
  with open(os.path.join(out_dir, "results_per_length.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["label", "task", "seed", "length", "metric", "value"])
    for r in runs:
      for metric, values in (("accuracy", r.per_length), ("perplexity", r.per_length_perplexity or {}),
                             ("greedy_exact_match", r.per_length_exact or {})):
        for length in sorted(values):
          w.writerow([r.label, r.task, r.seed, length, metric, values[length]])
  write_cells_csv(heatmaps(runs), out_dir)


def write_cells_csv(maps: Sequence[Heatmap], out_dir: str) -> None:
  """``results_cells.csv``: one row per form, metric, scheme row, task and range (beyond / in):
  seeds with a value, mean, 95% bootstrap interval, maximum, seeds learned / seeds, and for the
  beyond-range cells the rank (``=``: tied) and mark (best / tied)."""
  with open(os.path.join(out_dir, "results_cells.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["form", "metric", "row", "task", "range", "n", "mean", "ci_lo", "ci_hi", "max",
                "learned", "total", "ranked", "rank", "mark"])
    for h in maps:
      for i, row in enumerate(h.rows):
        for j, task in enumerate(h.tasks):
          for name, grid in (("beyond", h.beyond_cells), ("in", h.within_cells)):
            c = grid[i][j]
            if c is None:
              continue
            beyond = name == "beyond"
            w.writerow([h.form, h.metric, row, task, name, c.n,
                        *("" if v is None else v for v in (c.mean, c.lo, c.hi, c.max)),
                        c.n_learned, c.total, int(c.ranked),
                        h.columns[j].ranks.get(row, "") if beyond else "",
                        h.columns[j].marks.get(row, "") if beyond else ""])


def curves(runs: list[Run], task: str, metric: str = "accuracy"
           ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """``label -> (lengths, mean over seeds, std over seeds)`` for one task."""
  out = {}
  by_label: dict[str, list[dict[int, float]]] = {}
  for r in runs:
    values = r.per_length if metric == "accuracy" else r.per_length_perplexity
    if r.task == task and values:
      by_label.setdefault(r.label, []).append(values)
  for label, series in sorted(by_label.items()):
    lengths = np.array(sorted(set().union(*series)))
    table = np.array([[s.get(int(l), np.nan) for l in lengths] for s in series], dtype=float)
    with np.errstate(all="ignore"):
      import warnings
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(table, axis=0)
        std = np.nanstd(table, axis=0, ddof=1) if len(series) > 1 else np.zeros_like(mean)
    out[label] = (lengths, mean, np.nan_to_num(std))
  return out


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def train_ranges(runs: Sequence[Run], task: str) -> list[tuple[int, int]]:
  """The distinct training ranges of ``task``'s runs, sorted."""
  return sorted({(int(r.train_range[0]), int(r.train_range[1])) for r in runs
                 if r.task == task and tuple(r.train_range) != (0, 0)})


_RANGE_STYLES = (":", "--", "-.", (0, (1, 3)))
_RANGE_HATCHES = ("", "\\\\", "..", "//", "xx")


def _draw(ax, runs: list[Run], task: str, metric: str, colors: dict[str, Any]) -> None:
  """One task's curves; each distinct training range shaded (accuracy) or marked at its end
  (perplexity), labelled ``training lengths lo–hi`` for the legend."""
  data = curves(runs, task, metric)
  for k, (lo, hi) in enumerate(train_ranges(runs, task)):
    name = f"training lengths {lo}–{hi}"
    if metric == "accuracy":  # one band per range; further ones hatched, overlaps darker
      ax.axvspan(lo - 0.5, hi + 0.5, facecolor=(0.5, 0.5, 0.5, 0.12), lw=0, label=name,
                 hatch=_RANGE_HATCHES[k % len(_RANGE_HATCHES)], edgecolor=(0.4, 0.4, 0.4, 0.5))
    else:
      ax.axvline(hi, color="0.5", ls=_RANGE_STYLES[k % len(_RANGE_STYLES)], lw=1, label=name)
  for i, (label, (lengths, mean, std)) in enumerate(data.items()):
    color = colors[label]
    style = ("-", "--", "-.", ":")[(i // 10) % 4]
    ax.plot(lengths, mean, style, color=color, lw=1.2, label=label)
    if np.any(std > 0):
      lower, upper = mean - std, mean + std
      if metric == "accuracy":
        lower, upper = np.clip(lower, 0, 1), np.clip(upper, 0, 1)
      ax.fill_between(lengths, lower, upper, color=color, alpha=0.15, lw=0)
  ax.set_title(task)
  ax.set_xlabel("length")
  ax.set_ylabel(metric)
  if metric == "accuracy":
    ax.set_ylim(0, 1.02)
  else:
    ax.set_yscale("log")
  ax.grid(alpha=0.3)


def _legend_below(fig, axes, fontsize: float = 7):
  """One legend for ``axes`` (entries by name, first handle kept, training ranges first) below
  every panel, in as many columns as the figure's width holds; constrained layout keeps space
  for it."""
  entries: dict[str, Any] = {}
  for ax in axes:
    for handle, name in zip(*ax.get_legend_handles_labels()):
      entries.setdefault(name, handle)
  ranges = [n for n in entries if n.startswith("training lengths")]  # in the order drawn
  names = ranges + sorted(n for n in entries if n not in ranges)
  if not names:
    return None
  width_in = fig.get_figwidth()
  char_in = 0.55 * fontsize / 72  # a character's width, roughly
  per_column = 0.6 + char_in * max(len(n) for n in names)
  ncol = max(1, min(len(names), int(width_in // per_column)))
  return fig.legend([entries[n] for n in names], names, loc="outside lower center", ncol=ncol,
                    fontsize=fontsize, frameon=False)


def _legend_rows(runs: Sequence[Run], tasks: Sequence[str], width_in: float, fontsize=7) -> int:
  names = {r.label for r in runs if r.task in tasks}
  names |= {f"training lengths {lo}–{hi}" for t in tasks for lo, hi in train_ranges(runs, t)}
  if not names:
    return 0
  per_column = 0.6 + 0.55 * fontsize / 72 * max(len(n) for n in names)
  ncol = max(1, min(len(names), int(width_in // per_column)))
  return math.ceil(len(names) / ncol)


def task_figure(runs: list[Run], task: str, metric: str, colors: dict[str, Any]):
  """One task's figure: its curves, the legend below the axes."""
  plt = _pyplot()
  rows = _legend_rows(runs, [task], 7.0)
  fig, ax = plt.subplots(figsize=(7, 3.6 + 0.17 * rows), layout="constrained")
  _draw(ax, runs, task, metric, colors)
  if metric == "perplexity":
    ax.set_xscale("log", base=2)
  _legend_below(fig, [ax])
  return fig


def overview_figure(runs: list[Run], task_names: Sequence[str], colors: dict[str, Any]):
  """Every accuracy task in one figure, one legend below all panels."""
  plt = _pyplot()
  ncols = min(5, len(task_names))
  nrows = math.ceil(len(task_names) / ncols)
  width = 3.6 * ncols
  rows = _legend_rows(runs, task_names, width, fontsize=8)
  fig, axes = plt.subplots(nrows, ncols, figsize=(width, 2.8 * nrows + 0.5 + 0.2 * rows),
                           squeeze=False, layout="constrained")
  for ax, task in zip(axes.flat, task_names):
    _draw(ax, runs, task, "accuracy", colors)
  for ax in list(axes.flat)[len(task_names):]:
    ax.axis("off")
  _legend_below(fig, list(axes.flat), fontsize=8)
  return fig


def plot(runs: list[Run], out_dir: str) -> list[str]:
  """Per-task plots and one overview; returns the files written."""
  plt = _pyplot()
  plot_dir = os.path.join(out_dir, "plots")
  os.makedirs(plot_dir, exist_ok=True)
  labels = sorted({r.label for r in runs})
  cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
  colors = {label: cmap(i % cmap.N) for i, label in enumerate(labels)}
  written = []
  acc_tasks = task_order(r.task for r in runs if r.per_length and not r.is_lm)
  for task in acc_tasks:
    fig = task_figure(runs, task, "accuracy", colors)
    written.append(_save(fig, os.path.join(plot_dir, f"{task}.png")))
    plt.close(fig)
  for task in task_order(r.task for r in runs if r.is_lm):
    fig = task_figure(runs, task, "perplexity", colors)
    written.append(_save(fig, os.path.join(plot_dir, f"{task}_perplexity.png")))
    plt.close(fig)
  if len(acc_tasks) > 1:
    fig = overview_figure(runs, acc_tasks, colors)
    written.append(_save(fig, os.path.join(plot_dir, "all_tasks.png")))
    plt.close(fig)
  return written


def _save(fig, path: str) -> str:
  """Writes ``fig`` as PNG, atomically; the bytes depend on the figure only (no version stamp)."""
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110, metadata=PNG_METADATA)
  os.replace(tmp, path)
  return path


# ----------------------------------------------------------------------------- heatmaps

FORM_ORDER = ("encoder", "decoder")
# (name, in-range attribute, beyond-range attribute, whether chance is the task's (else 0), title)
HEATMAP_METRICS = (
    ("accuracy", "in_range", "out_of_range", True, "accuracy"),
    ("exact_match", "exact_in", "exact_out", False, "greedy exact match"),
)


def chance(task: str) -> float:
  """Accuracy of guessing every answer token uniformly: 1 / the task's output vocabulary size.

  The floor of a task's colour scale (0 for a task this library does not know). Answer tokens
  are scored one by one (TASKS.md), so guessing scores this on average whatever the length.
  """
  try:
    from posenc import tasks
    cls = tasks.registry().get(task)
  except Exception:  # noqa: BLE001 — collecting needs no working library
    return 0.0
  n = int(getattr(cls, "output_vocab_size", 0) or 0)
  return 1.0 / n if n > 0 else 0.0


def _form(r: Run) -> str:
  return str(r.attrs.get("mode") or "encoder")


def forms(runs: Sequence[Run]) -> list[str]:
  """The model forms present (encoder, decoder, then any other, by name), LM runs left out."""
  present = {_form(r) for r in runs if not r.is_lm}
  return sorted(present, key=lambda f: (FORM_ORDER.index(f) if f in FORM_ORDER else 9, f))


@dataclasses.dataclass
class Heatmap:
  """One form's scheme × task table of one metric over seeds (experiments.stats).

  ``beyond`` / ``within``: means over seeds (NaN: no run); ``beyond_cells`` / ``within_cells``:
  each cell's statistics (mean, 95% interval, max, learned / total; None: no run);
  ``columns``: per task, the ranking of the beyond-range cells with best / tied-best marks.
  """

  form: str
  metric: str
  title: str
  rows: list[str]  # the runs' ``variant`` (scheme and settings, without the form)
  tasks: list[str]
  beyond: np.ndarray  # [rows, tasks] float, NaN where missing
  within: np.ndarray
  seeds: np.ndarray  # [rows, tasks] int: runs averaged (beyond-range values)
  chance: list[float]  # per task: the colour scale's floor
  beyond_cells: list[list[st.Cell | None]] = dataclasses.field(default_factory=list)
  within_cells: list[list[st.Cell | None]] = dataclasses.field(default_factory=list)
  columns: list[st.Column] = dataclasses.field(default_factory=list)
  # per task: how its runs were judged learned (Run.learned_by, distinct values joined by "; ")
  criteria: list[str] = dataclasses.field(default_factory=list)

  def scaled(self, values: np.ndarray) -> np.ndarray:
    """``(value - chance) / (1 - chance)`` per task, clipped to [0, 1] (NaN stays NaN)."""
    floor = np.asarray(self.chance, dtype=float)[None, :]
    with np.errstate(invalid="ignore"):
      return np.clip((values - floor) / np.maximum(1.0 - floor, 1e-12), 0.0, 1.0)

  def best(self) -> list[list[str]]:
    """Per task, the rows marked best or tied-best beyond range (experiments.stats.rank_column),
    in row order; empty where the column has no best mark."""
    return [[r for r in self.rows if r in col.marks] for col in self.columns]

  def unlearned(self, i: int, j: int) -> bool:
    """Whether cell (i, j) exists and fewer than half its seeds learned (shown, not ranked)."""
    c = self.beyond_cells[i][j] or self.within_cells[i][j]
    return c is not None and not c.mostly_learned


def heatmaps(runs: Sequence[Run]) -> list[Heatmap]:
  """Every (form, metric) table with at least one value; LM runs are left out."""
  out = []
  for form in forms(runs):
    members = [r for r in runs if not r.is_lm and _form(r) == form]
    for metric, in_attr, out_attr, by_chance, title in HEATMAP_METRICS:
      have = [r for r in members if getattr(r, in_attr) is not None or getattr(r, out_attr) is not None]
      if not have:
        continue
      rows = sorted({r.variant or r.scheme for r in have})
      task_names = task_order(r.task for r in have)
      floors = [chance(t) if by_chance else 0.0 for t in task_names]
      shape = (len(rows), len(task_names))
      beyond, within = np.full(shape, np.nan), np.full(shape, np.nan)
      seeds = np.zeros(shape, dtype=int)
      beyond_cells: list[list[st.Cell | None]] = [[None] * shape[1] for _ in rows]
      within_cells: list[list[st.Cell | None]] = [[None] * shape[1] for _ in rows]
      for i, row in enumerate(rows):
        for j, task in enumerate(task_names):
          cell = [r for r in have if (r.variant or r.scheme) == row and r.task == task]
          if not cell:
            continue
          learned = {_pair(r): r.learned for r in cell}
          b = st.cell({_pair(r): getattr(r, out_attr) for r in cell}, learned)
          w = st.cell({_pair(r): getattr(r, in_attr) for r in cell}, learned)
          beyond_cells[i][j], within_cells[i][j] = b, w
          beyond[i, j] = np.nan if b.mean is None else b.mean
          within[i, j] = np.nan if w.mean is None else w.mean
          seeds[i, j] = b.n
      columns = [st.rank_column({row: beyond_cells[i][j] for i, row in enumerate(rows)
                                 if beyond_cells[i][j] is not None}, floors[j])
                 for j in range(len(task_names))]
      if form == "decoder" and metric == "accuracy":
        title = "teacher-forced accuracy"
      criteria = ["; ".join(sorted({r.learned_by for r in have if r.task == t and r.learned_by}))
                  for t in task_names]
      out.append(Heatmap(form, metric, title, rows, task_names, beyond, within, seeds, floors,
                         beyond_cells, within_cells, columns, criteria))
  return out


def _pair(r: Run) -> tuple:
  return r.pair or (r.seed,)


def _heat_file(h: Heatmap) -> str:
  return f"{h.form}_{h.metric}.png"


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}{'s' if n != 1 else ''}"


def _cell_pct(v: float | None) -> str:
  return "–" if v is None or math.isnan(v) else f"{100 * v:.1f}"


_MARK_TEXT = {"best": "**best**", "tied": "**tied-best**"}


def _stat_text(c: st.Cell | None) -> str:
  """``mean [lo, hi]`` in %, or ``–``."""
  if c is None or c.mean is None:
    return "–"
  return f"{_cell_pct(c.mean)} [{_cell_pct(c.lo)}, {_cell_pct(c.hi)}]"


def _seed_text(counts: Iterable[int]) -> str:
  counts = sorted({int(n) for n in counts if n})
  if not counts:
    return "no seeds"
  return (f"{counts[0]} seed{'s' if counts[0] != 1 else ''} per cell" if len(counts) == 1
          else f"{counts[0]}–{counts[-1]} seeds per cell")


LEARNED_BAR = 0.9  # the atlas's requirement: this share of a ranked task's points learned


def learned_rows(maps: Sequence[Heatmap]) -> list[dict[str, Any]]:
  """Per form and task, how many points (scheme × task cells) learned in range.

  A point counts as learned where at least half its seeds did (the cells the rankings use,
  :attr:`experiments.stats.Cell.mostly_learned`). Learned flags belong to runs, not metrics, so
  each form is read from one heatmap (the decoder's greedy exact match where it has one; any
  metric gives the same flags). Each row: ``form``, ``task``, ``points``, ``learned`` (points),
  ``seeds``, ``seeds_learned``, ``ranked`` (some point learned: the task is in the rankings),
  ``meets_bar`` (ranked and at least :data:`LEARNED_BAR` of its points learned) and
  ``criterion`` (how its runs were judged: :attr:`Heatmap.criteria`).
  """
  rows, seen = [], set()
  ordered = sorted(maps, key=lambda h: (h.form, h.metric != "exact_match"))
  for h in ordered:
    if h.form in seen:
      continue
    seen.add(h.form)
    for j, task in enumerate(h.tasks):
      cells = [h.beyond_cells[i][j] or h.within_cells[i][j] for i in range(len(h.rows))]
      cells = [c for c in cells if c is not None]
      learned = sum(c.mostly_learned for c in cells)
      rows.append({"form": h.form, "task": task, "points": len(cells), "learned": learned,
                   "seeds": sum(c.total for c in cells),
                   "seeds_learned": sum(c.n_learned for c in cells), "ranked": learned > 0,
                   "meets_bar": learned > 0 and learned >= LEARNED_BAR * len(cells),
                   "criterion": h.criteria[j] if j < len(h.criteria) else ""})
  order = {h.form: k for k, h in enumerate(maps)}
  return sorted(rows, key=lambda r: order[r["form"]])


def learned_markdown(maps: Sequence[Heatmap]) -> list[str]:
  """The report's table of :func:`learned_rows`."""
  rows = learned_rows(maps)
  if not rows:
    return []
  parts = ["### Learned in range, per task", "",
           "A point (one scheme × task, all its seeds) counts as learned where at least half its "
           "seeds learned the task in range: the cells the rankings use. A task no point learned "
           "is left out of the rankings (its beyond-range scores measure nothing); on a ranked "
           f"task the atlas asks that at least {100 * LEARNED_BAR:g}% of the points learned.", "",
           "| form | task | points learned | seeds learned | rankings | learned when |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    share = r["learned"] / r["points"] if r["points"] else 0.0
    if not r["ranked"]:
      status = "left out: no point learned in range"
    elif r["meets_bar"]:
      status = f"ranked; ≥ {100 * LEARNED_BAR:g}% learned"
    else:
      status = f"ranked; below {100 * LEARNED_BAR:g}% learned"
    parts.append(f"| {r['form']} | {r['task']} | {r['learned']} of {r['points']} "
                 f"({100 * share:.0f}%) | {r['seeds_learned']} of {r['seeds']} | {status} "
                 f"| {r['criterion'] or '–'} |")
  return parts + [""]


def heatmap_markdown(maps: Sequence[Heatmap], folder: str = "heatmaps",
                     baselines: Mapping[tuple[str, str], Mapping[str, dict]] | None = None,
                     aggregates: bool = False) -> str:
  """The heatmaps' section of ``results.md``: each figure, its numbers with intervals, who is
  best or tied-best per task, a ranking table with ties, with ``baselines`` (see
  :func:`compute_baselines`) each rule's scores beside the schemes', and with ``aggregates``
  the published aggregates computed their way (:func:`aggregates_markdown`) at the end."""
  if not maps:
    return ""
  parts = ["## Heatmaps: which encoding extrapolates", "",
           "Each cell, in %: the mean over seeds beyond the training lengths [its 95% bootstrap "
           f"interval, {st.RESAMPLES:,} resamples of the seeds], the maximum over seeds (the "
           "papers' aggregate), (the in-range mean) and how many seeds learned the task in range: "
           f"the run's own criterion where results.json has one, else a mean score ≥ "
           f"{100 * st.LEARNED_THRESHOLD:g}% over the top quarter of the training lengths (greedy "
           "exact match for decoders that decode greedily, accuracy otherwise). A cell where "
           "fewer than half the seeds learned is shown but not ranked (hatched in the figures). "
           "**best**: the top ranked scheme, separated from every other by a paired bootstrap over "
           f"seeds (at least {st.MIN_PAIRED_SEEDS} seeds learned in both; the 95% interval of the "
           "difference excludes 0) or by intervals that do not overlap; **tied-best**: the top "
           "scheme and those not separated from it. No mark where no learned scheme's interval "
           f"lies clearly above chance (≥ chance + {st.CHANCE_MARGIN:g} × (1 − chance)) or every "
           "learned scheme ties. With 2 or 3 seeds an interval is the seeds' range. Colours "
           "(figures) run from chance to 100% per task: (value − chance) / (1 − chance), chance "
           "being 1 / the task's output vocabulary (0 for exact match).", ""]
  parts += learned_markdown(maps)
  for h in maps:
    parts += [f"### {h.form}: {h.title}", "", f"![{h.form} {h.metric}]({folder}/{_heat_file(h)})",
              "", f"{_count(len(h.rows), 'row')} × {_count(len(h.tasks), 'task')}, "
              f"{_seed_text(h.seeds.flat)}.", "",
              "| scheme | " + " | ".join(h.tasks) + " |", "|---|" + "---|" * len(h.tasks)]
    for i, row in enumerate(h.rows):
      cells = []
      for j in range(len(h.tasks)):
        b, w = h.beyond_cells[i][j], h.within_cells[i][j]
        if b is None:
          cells.append("")
          continue
        text = (f"{_stat_text(b)} max {_cell_pct(b.max)} ({_cell_pct(w.mean)}) "
                f"{b.n_learned}/{b.total}")
        mark = h.columns[j].marks.get(row)
        if mark:
          text += " " + _MARK_TEXT[mark]
        elif not b.ranked:
          text += " not ranked"
        cells.append(text)
      parts.append(f"| {row} | " + " | ".join(cells) + " |")
    best = []
    for j, col in enumerate(h.columns):
      names = h.best()[j]
      if names:
        kind = "best" if len(names) == 1 else "tied-best"
        best.append(f"{kind}: " + ", ".join(names))
      else:
        best.append(f"none ({col.note})")
    parts.append("| **best** | " + " | ".join(best) + " |")
    parts.append("| chance | " + " | ".join(f"{100 * c:.1f}" for c in h.chance) + " |")
    parts += ["", f"**Ranking, {h.form} {h.title}** (beyond the training lengths; learned "
              "cells only; `=`: tied with the others of its rank, not separated from the rank's "
              "leader; –: not ranked)", "",
              "| scheme | " + " | ".join(h.tasks) + " |", "|---|" + "---|" * len(h.tasks)]
    for row in h.rows:
      parts.append(f"| {row} | " + " | ".join(col.ranks.get(row, "–") for col in h.columns) + " |")
    parts.append("")
    if baselines:
      parts += _baseline_table(h, baselines)
  if aggregates:
    parts += aggregates_markdown(maps)
  return "\n".join(parts)


# ----------------------------------------------------------------------------- published aggregates

# Kazemnejad et al. (NeurIPS 2023), Figure 1 (LITERATURE.md): posenc scheme -> (their name, their
# mean reciprocal rank over their ten tasks).
KAZEMNEJAD_PUBLISHED = {"none": ("NoPE", 0.69), "t5": ("T5", 0.55), "alibi": ("ALiBi", 0.50),
                        "rope": ("Rotary", 0.33), "sinusoidal": ("APE", 0.22)}
MRR_DEFINITION = (
    "Kazemnejad et al. rank their five encodings \"following Liang et al. (2022), the mean ranking "
    "of models compared against each other for all tasks and scenarios\" and give no formula. "
    "Computed here as experiments.aggregates.mean_reciprocal_rank reads it: a scenario is one task "
    "and one seed (seed k of each scheme against seed k of the others); in each scenario the five "
    "are ranked by greedy exact match beyond the training lengths, 1 = best, tied scores sharing "
    "the mean of the ranks they span; a scheme's value is the mean of 1 / rank over all "
    "scenarios (higher is better; with five schemes the values add up to about 2.28).")
MRR_TASKS = (
    "Tasks: those on which at least one seed of one of the five learned the task in range "
    "(experiments.stats, as in the heatmaps: the run's criterion, else a mean greedy exact match ≥ "
    f"{100 * st.LEARNED_THRESHOLD:g}% over the top quarter of the training lengths). On such a task "
    "every seed of each of the five is ranked, learned or not, as the paper ranks every model it "
    "trained. A task none of the five learned is left out: its beyond-range scores measure nothing, "
    "and their ties (all at 0) would only pull every value towards 1/3. Seeds: those all five "
    "have on the task (by seed number).")


@dataclasses.dataclass
class RankResult:
  """Kazemnejad et al.'s mean reciprocal rank over one heatmap (:func:`kazemnejad_mrr`)."""

  missing: list[str]  # of the five, those without a row (nothing is ranked then)
  tasks: list[str]  # the tasks ranked on, in the heatmap's order
  seeds: dict[str, int]  # ranked task -> seeds ranked on it
  left_out: dict[str, str]  # task -> why it was left out
  mrr: dict[str, float]  # scheme -> mean reciprocal rank (empty where nothing was ranked)
  per_task: dict[str, dict[str, float]]  # task -> scheme -> mean reciprocal rank on that task

  @property
  def scenarios(self) -> int:
    return sum(self.seeds.values())


def kazemnejad_mrr(h: Heatmap) -> RankResult:
  """The mean reciprocal rank of Kazemnejad et al.'s five (experiments.aggregates) over the
  beyond-range values of heatmap ``h`` (the decoder's greedy exact match), per seed.

  The five are the rows named by the scheme alone (default settings). A task is ranked on where
  all five have a value for some common seed and at least one seed of one of them learned it in
  range (:data:`MRR_TASKS`); the others are in ``left_out`` with the reason.
  """
  five = list(agg.KAZEMNEJAD_SCHEMES)
  missing = [s for s in five if s not in h.rows]
  result = RankResult(missing, [], {}, {}, {}, {})
  if missing:
    return result
  scores: dict[str, dict[str, list[float]]] = {s: {} for s in five}
  for j, task in enumerate(h.tasks):
    cells = {s: h.beyond_cells[h.rows.index(s)][j] for s in five}
    lacking = [s for s, c in cells.items() if c is None or not c.values]
    if lacking:
      result.left_out[task] = "no run of " + ", ".join(lacking)
      continue
    common = sorted(set.intersection(*(set(c.values) for c in cells.values())))
    if not common:
      result.left_out[task] = "no seed that all five ran"
      continue
    if not any(c.n_learned for c in cells.values()):
      result.left_out[task] = "none of the five learned it in range"
      continue
    for s, c in cells.items():
      scores[s][task] = [c.values[k] for k in common]
    result.tasks.append(task)
    result.seeds[task] = len(common)
    result.per_task[task] = agg.mean_reciprocal_rank({s: {task: scores[s][task]} for s in five},
                                                     five)
  if result.tasks:
    result.mrr = agg.mean_reciprocal_rank(scores, five)
  return result


def _plain_row(row: str) -> str | None:
  """The row name of ``row``'s runs with contiguous positions, if ``row`` names randomized
  positions (``rope [randomized]`` -> ``rope``, ``rope [randomized, smoke]`` -> ``rope [smoke]``);
  else None."""
  if not row.endswith("]") or " [" not in row:
    return None
  scheme, inside = row[:-1].split(" [", 1)
  settings = inside.split(", ")
  if "randomized" not in settings:
    return None
  rest = [t for t in settings if t != "randomized"]
  return scheme + (f" [{', '.join(rest)}]" if rest else "")


def randomized_gains(h: Heatmap) -> dict[str, dict]:
  """Per row of heatmap ``h`` (the encoder's accuracy) that has a randomized-positions twin
  (the same row name with ``randomized`` among its settings: ``rope`` and ``rope [randomized]``):
  experiments.aggregates.randomized_gain over the tasks where both have beyond-range values
  and both learned in range (at least half their seeds, the cells the rankings use; each task's
  per-seed values, averaged there), plus ``unlearned`` (task -> the two cells' means, where
  either did not learn: a beyond-range score of such a model measures nothing, so the task
  stays out of the aggregates, which are None where no task is left) and ``left_out`` (tasks
  only one of the two rows has). Keyed by the plain row, in row order."""
  twins = {_plain_row(r): r for r in h.rows if _plain_row(r) in h.rows}
  out = {}
  for i, row in enumerate(h.rows):
    if row not in twins:
      continue
    k = h.rows.index(twins[row])
    plain, randomized, left_out, unlearned = {}, {}, [], {}
    for j, task in enumerate(h.tasks):
      a, b = h.beyond_cells[i][j], h.beyond_cells[k][j]
      if a is not None and b is not None and a.values and b.values:
        if a.mostly_learned and b.mostly_learned:
          plain[task], randomized[task] = list(a.values.values()), list(b.values.values())
        else:
          unlearned[task] = {"plain": a.mean, "randomized": b.mean}
      elif (a is not None and a.values) or (b is not None and b.values):
        left_out.append(task)
    if plain:
      gain = agg.randomized_gain(plain, randomized)
    elif unlearned:
      gain = {"per_task": {}, "absolute_points": None, "relative": None,
              "relative_of_means": None, "definition": agg.GAIN_DEFINITION}
    else:
      continue
    out[row] = {**gain, "unlearned": unlearned, "left_out": left_out}
  return out


def _signed(v: float, digits: int = 1) -> str:
  """``+1.2`` / ``-1.2``; a value that rounds to zero is ``0.0`` (never ``-0.0``)."""
  text = f"{v:+.{digits}f}"
  return f"{0.0:.{digits}f}" if float(text) == 0 else text


def _rel(v: float | None) -> str:
  return "–" if v is None else _signed(100 * v) + "%"


def aggregates_markdown(maps: Sequence[Heatmap]) -> list[str]:
  """The "Published aggregates, computed their way" section of ``results.md``: Kazemnejad et
  al.'s mean reciprocal rank over the decoder's greedy exact match (:func:`kazemnejad_mrr`)
  beside their Figure 1, and the randomized-positions gain over the encoder's accuracy
  (:func:`randomized_gains`), with their definitions."""
  by_key = {(h.form, h.metric): h for h in maps}
  parts = ["## Published aggregates, computed their way", "",
           "The papers' own aggregates over these runs (experiments.aggregates), as far as their "
           "text defines them. The protocols differ from the papers' (model size, tasks, lengths, "
           "seeds): set an ordering beside theirs, not a number.", "",
           "### Kazemnejad et al.: mean reciprocal rank (decoder, greedy exact match)", "",
           MRR_DEFINITION, "", MRR_TASKS, ""]
  dec = by_key.get(("decoder", "exact_match"))
  mrr = kazemnejad_mrr(dec) if dec is not None else None
  if dec is None:
    parts += ["Not computed: no decoder runs with greedy exact match.", ""]
  elif mrr.missing:
    parts += [f"Not computed: no decoder row of {', '.join(mrr.missing)} (the five are ranked "
              "against each other; a row named by its scheme alone counts).", ""]
  elif not mrr.tasks:
    left = "; ".join(f"{t} ({why})" for t, why in mrr.left_out.items())
    parts += [f"Not computed: no task to rank on; left out: {left or 'no task ran'}.", ""]
  else:
    left = "; ".join(f"{t} ({why})" for t, why in mrr.left_out.items()) or "none"
    counts = sorted(set(mrr.seeds.values()))
    seeds = (f"{_count(counts[0], 'seed')} each" if len(counts) == 1
             else "seeds " + ", ".join(f"{t} {n}" for t, n in mrr.seeds.items()))
    parts += [f"Ranked on {_count(len(mrr.tasks), 'task')} ({', '.join(mrr.tasks)}) × {seeds} "
              f"= {_count(mrr.scenarios, 'scenario')}; left out: {left}.", "",
              "| scheme | Kazemnejad et al. (Figure 1, ten tasks) | here | "
              + " | ".join(mrr.tasks) + " |", "|---|---|---|" + "---|" * len(mrr.tasks)]
    for s in agg.KAZEMNEJAD_SCHEMES:
      name, published = KAZEMNEJAD_PUBLISHED[s]
      parts.append(f"| {s} ({name}) | {published:.2f} | {mrr.mrr[s]:.3f} | "
                   + " | ".join(f"{mrr.per_task[t][s]:.3f}" for t in mrr.tasks) + " |")
    parts.append("")

  parts += ["### Ruoss et al.: what randomized positions add (encoder, accuracy)", ""]
  enc = by_key.get(("encoder", "accuracy"))
  gains = randomized_gains(enc) if enc is not None else {}
  if not gains:
    parts += ["Not computed: no encoder scheme has both a plain and a `[randomized]` row.", ""]
  else:
    tasks = [t for t in enc.tasks
             if any(t in g["per_task"] or t in g["unlearned"] for g in gains.values())]
    definition = next(iter(gains.values()))["definition"]
    parts += ["Per scheme with a plain (contiguous positions) and a `[randomized]` row, the "
              "beyond-range accuracy of each, the mean over all its seeds (as in the heatmap); "
              "per task randomized − plain in points (plain → randomized, %). A task counts only "
              "where both cells learned it in range (at least half their seeds, as the rankings "
              "ask): elsewhere the cell reads \"not learned\" with both scores, and the task "
              "stays out of the scheme's aggregates, since a beyond-range score of a model that "
              "did not learn its task measures nothing. "
              f"Definition (experiments.aggregates.randomized_gain): {definition}", "",
              "Ruoss et al.'s abstract reports that randomized positions increase test accuracy "
              "\"by 12.0% on average\"; how that number is aggregated (absolute points or relative, "
              "over which tasks, schemes, seeds and learning rates, maxima or means) is not known "
              "(LITERATURE.md), so no number here is compared with it.", "",
              "| scheme | " + " | ".join(tasks) + " | absolute_points | relative "
              "| relative_of_means | left out |", "|---|" + "---|" * (len(tasks) + 4)]
    for row, g in gains.items():
      cells = []
      for t in tasks:
        v, u = g["per_task"].get(t), g["unlearned"].get(t)
        if u is not None:
          cells.append(f"not learned ({_cell_pct(u['plain'])} → {_cell_pct(u['randomized'])})")
        else:
          cells.append("" if v is None else f"{_signed(v['absolute_points'])} "
                       f"({_cell_pct(v['plain'])} → {_cell_pct(v['randomized'])})")
      points = "–" if g["absolute_points"] is None else _signed(g["absolute_points"])
      parts.append(f"| {row} | " + " | ".join(cells)
                   + f" | {points} | {_rel(g['relative'])} | "
                   f"{_rel(g['relative_of_means'])} | {', '.join(g['left_out']) or '–'} |")
    parts.append("")
  return parts


def _baseline_score(result: Mapping[str, Any], metric: str, which: str) -> float | None:
  if metric == "exact_match":
    result = result.get("greedy") or {}
    key = f"{which}_range_exact_match"
  else:
    key = f"{which}_range_score"
  return _num(result.get(key))


def _baseline_table(h: Heatmap, baselines: Mapping[tuple[str, str], Mapping[str, dict]]) -> list[str]:
  """Rows: the rules of experiments.baselines for this heatmap's tasks; cells ``beyond (in)``."""
  rules = sorted({rule for t in h.tasks for rule in baselines.get((h.form, t), {})})
  if not rules:
    return []
  lines = [f"**Baselines, {h.form} {h.title}** (experiments.baselines: rules that ignore "
           "positions, scored on the evaluation samples of the first point of each task; beyond "
           "range (in range), %; empty: the rule does not apply to the task)", "",
           "| rule | " + " | ".join(h.tasks) + " |", "|---|" + "---|" * len(h.tasks)]
  for rule in rules:
    cells = []
    for t in h.tasks:
      result = baselines.get((h.form, t), {}).get(rule)
      if result is None:
        cells.append("")
        continue
      cells.append(f"{_cell_pct(_baseline_score(result, h.metric, 'out_of'))} "
                   f"({_cell_pct(_baseline_score(result, h.metric, 'in'))})")
    lines.append(f"| {rule} | " + " | ".join(cells) + " |")
  return lines + [""]


def _module_baselines(config_path: str) -> dict[str, dict]:
  """experiments.baselines.baseline_results on the config of ``config_path`` (a run's
  config.json)."""
  import ml_collections

  from experiments import baselines as baselines_lib
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  return baselines_lib.baseline_results(config)


BASELINES_FILE = "baselines.json"


def _config_digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _read_baselines_cache(path: str | None) -> dict[str, dict]:
  """``report/baselines.json`` as :func:`compute_baselines` wrote it; ``{}`` where it is
  missing or unreadable (then every entry is computed again)."""
  if not path or not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      data = json.load(f)
  except ValueError:
    return {}
  return data if isinstance(data, dict) else {}


def compute_baselines(runs: Sequence[Run], compute: Callable[[str], dict] | None = None,
                      log=print, cache: str | None = None) -> dict[tuple[str, str], dict[str, dict]]:
  """``(form, task) -> rule -> results`` from the first run (by path) of each form and task that
  has a config.json; ``compute`` maps a config.json path to the rules' results
  (default: experiments.baselines). A task the rules do not cover is left out, with a warning.

  ``cache``: a JSON file (the report's ``baselines.json``) holding each entry with the SHA-256 of
  the config.json it was computed from; an entry whose run and config bytes are unchanged is
  read from it instead of computed again, and the file is rewritten (atomically) with exactly
  the entries returned. The rules' scores are a function of that config alone
  (experiments.baselines), so reading them back gives the same report bytes.
  """
  compute = compute or _module_baselines
  first: dict[tuple[str, str], Run] = {}
  for r in sorted(runs, key=lambda r: r.path):
    if not r.is_lm and r.config_path:
      first.setdefault((_form(r), r.task), r)
  known = _read_baselines_cache(cache)
  out, kept = {}, {}
  for key, r in sorted(first.items()):
    name = f"{key[0]}/{key[1]}"
    digest = _config_digest(r.config_path)
    entry = known.get(name)
    if isinstance(entry, dict) and entry.get("config_sha256") == digest and "rules" in entry:
      out[key] = entry["rules"]
    else:
      try:
        out[key] = compute(r.config_path)
      except Exception as e:  # noqa: BLE001 — a task without baselines is left out, said once
        log(f"warning: no baselines for {key[0]} {key[1]} ({r.config_path}): "
            f"{type(e).__name__}: {e}")
        continue
    where = (os.path.relpath(r.config_path, os.path.dirname(os.path.abspath(cache)))
             if cache else r.config_path)
    kept[name] = {"config": where.replace(os.sep, "/"),
                  "config_sha256": digest, "rules": out[key]}
  if cache:
    tmp = cache + ".tmp"
    with open(tmp, "w") as f:
      json.dump(kept, f, indent=1, sort_keys=True)
      f.write("\n")
    os.replace(tmp, cache)
  return out


def heatmap_figure(h: Heatmap):
  """The figure of one heatmap (beyond range left, in range right): each cell its mean and 95%
  interval in %, hatched where fewer than half the seeds learned; best (solid red) and tied-best
  (dashed red) cells boxed on the beyond-range side."""
  plt = _pyplot()
  from matplotlib.patches import Rectangle

  cmap = plt.get_cmap("viridis").with_extremes(bad="0.88")  # grey: no run
  n_rows, n_cols = len(h.rows), len(h.tasks)
  width = 2 * (0.8 * n_cols + 0.6) + 3.2
  fig, axes = plt.subplots(1, 2, figsize=(width, 0.4 * n_rows + 2.8), squeeze=False,
                           layout="constrained")
  image = None
  for ax, values, grid, name in zip(axes[0], (h.beyond, h.within), (h.beyond_cells, h.within_cells),
                                    ("beyond the training lengths", "in range")):
    scaled = h.scaled(values)
    image = ax.imshow(np.ma.masked_invalid(scaled), cmap=cmap, vmin=0.0, vmax=1.0,
                      aspect="auto", interpolation="nearest")
    for i in range(n_rows):
      for j in range(n_cols):
        c = grid[i][j] if grid else None
        if c is None or c.mean is None:
          continue
        ax.text(j, i, f"{100 * c.mean:.0f}\n{100 * c.lo:.0f}–{100 * c.hi:.0f}", ha="center",
                va="center", fontsize=5.5, linespacing=1.0,
                color="black" if scaled[i, j] > 0.6 else "white")
        if h.unlearned(i, j):
          hatch = Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                            edgecolor=(0.85, 0.85, 0.85, 0.5), lw=0, gid="unlearned")
          if hasattr(hatch, "set_hatch_linewidth"):  # matplotlib ≥ 3.10
            hatch.set_hatch_linewidth(0.6)
          ax.add_patch(hatch)
    if values is h.beyond:
      for j, col in enumerate(h.columns):
        for row, mark in col.marks.items():
          i = h.rows.index(row)
          ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="red",
                                 lw=2.0 if mark == "best" else 1.3,
                                 ls="-" if mark == "best" else "--", gid=mark))
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels([f"{t}\n(chance {100 * c:.0f}%)" for t, c in zip(h.tasks, h.chance)],
                       rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(h.rows, fontsize=7)
    ax.set_title(name, fontsize=9)
  fig.colorbar(image, ax=list(axes[0]), shrink=0.8,
               label="(value − chance) / (1 − chance), per task")
  fig.suptitle(f"{h.form}: {h.title}, mean over seeds and 95% interval, %\n"
               "red box: best beyond range (dashed: tied-best); hatched: fewer than half the "
               "seeds learned in range", fontsize=9)
  return fig


def plot_heatmaps(maps: Sequence[Heatmap], out_dir: str) -> list[str]:
  """One PNG per heatmap (:func:`heatmap_figure`); returns the files written."""
  plt = _pyplot()

  folder = os.path.join(out_dir, "heatmaps")
  os.makedirs(folder, exist_ok=True)
  written = []
  for h in maps:
    fig = heatmap_figure(h)
    written.append(_save(fig, os.path.join(folder, _heat_file(h))))
    plt.close(fig)
  return written


def _remove_stale(folder: str, keep: Iterable[str]) -> None:
  """Deletes the PNGs in ``folder`` (collect's own) that this collect did not write."""
  keep = {os.path.abspath(k) for k in keep}
  if os.path.isdir(folder):
    for name in sorted(os.listdir(folder)):
      path = os.path.abspath(os.path.join(folder, name))
      if name.endswith(".png") and path not in keep:
        os.remove(path)


def collect(dirs: Sequence[str], out_dir: str, fold: Sequence[str] = (), log=print,
            heatmap: bool = False, baselines: bool | Callable[[str], dict] = False,
            aggregates: bool = False) -> list[Run]:
  """Reads every run under ``dirs`` and writes the CSVs, ``results.md`` and plots to ``out_dir``.

  With ``heatmap``, also ``heatmaps/<form>_<metric>.png`` and their section at the top of
  ``results.md``. PNGs in ``plots/`` and ``heatmaps/`` that this collect did not write (a task
  no longer present) are deleted, so the report is a function of the runs alone. With
  ``heatmap`` and ``baselines`` (True: experiments.baselines; or a function of a config.json
  path, :func:`compute_baselines`), each heatmap's section gains its baseline rules' scores;
  with ``heatmap`` and ``aggregates``, the section ends with the published aggregates computed
  their way (:func:`aggregates_markdown`).
  """
  runs = label_runs(find_runs(dirs, log=log), fold, log=log)
  os.makedirs(out_dir, exist_ok=True)
  not_done = [r.path for r in runs if not r.done]
  if not_done:
    log(f"warning: {len(not_done)} run(s) have results.json but no DONE: {', '.join(not_done[:3])}")
  write_csv(runs, out_dir, fold)
  rules = None
  if heatmap and baselines and runs:
    # experiments.baselines' scores are kept in the report (report/baselines.json) with the
    # config each came from, so a rebuild computes only what changed
    rules = compute_baselines(runs, None if baselines is True else baselines, log=log,
                              cache=os.path.join(out_dir, BASELINES_FILE) if baselines is True
                              else None)
  elif os.path.isfile(os.path.join(out_dir, BASELINES_FILE)):
    os.remove(os.path.join(out_dir, BASELINES_FILE))  # collect's own, from a run with baselines
  text = report_text(runs, heatmap, rules, aggregates)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(text)
  written = plot(runs, out_dir) if runs else []
  _remove_stale(os.path.join(out_dir, "plots"), written)
  if heatmap:
    _remove_stale(os.path.join(out_dir, "heatmaps"), plot_heatmaps(heatmaps(runs), out_dir))
  return runs


def report_text(runs: list[Run], heatmap: bool = False,
                baselines: Mapping[tuple[str, str], Mapping[str, dict]] | None = None,
                aggregates: bool = False) -> str:
  """``results.md``: the tables of :func:`markdown`, after the heatmaps' section with ``heatmap``
  (with ``baselines``' rules under each heatmap's tables, and with ``aggregates`` the published
  aggregates at its end)."""
  if not heatmap or not runs:
    return markdown(runs)
  return (heatmap_markdown(heatmaps(runs), baselines=baselines, aggregates=aggregates)
          + "\n## Every run\n\n" + markdown(runs))


def read_settings(folder: str) -> dict[str, Any]:
  """``<folder>/collect.json``: report settings kept with the runs (``{}`` without the file).

  Keys: ``heatmap`` (bool), ``baselines`` (bool), ``aggregates`` (bool) and ``fold`` (a list
  of config keys), the flags of the same names;
  a flag given on the command line wins. ``experiments/atlas/collect.json`` turns heatmaps on,
  so ``python -m experiments.collect experiments/atlas`` rebuilds the atlas's report as
  committed.
  """
  path = os.path.join(folder, SETTINGS_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    try:
      data = json.load(f)
    except ValueError as e:
      raise ValueError(f"{path}: not JSON ({e})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: must hold a JSON object, e.g. {{\"heatmap\": true}}")
  unknown = sorted(set(data) - set(SETTINGS))
  if unknown:
    raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
  for key in ("heatmap", "baselines", "aggregates"):
    if not isinstance(data.get(key, False), bool):
      raise ValueError(f"{path}: {key} must be true or false, got {data[key]!r}")
  fold = data.get("fold", [])
  if not (isinstance(fold, list) and all(isinstance(k, str) for k in fold)):
    raise ValueError(f"{path}: fold must be a list of config keys, got {fold!r}")
  return data


def main(argv):
  dirs = argv[1:]
  if not dirs:
    raise app.UsageError("name one or more folders holding runs: "
                         "python -m experiments.collect RUNS_DIR... [--out DIR]")
  out_dir = _OUT.value or os.path.join(dirs[0], "report")
  try:
    settings = read_settings(dirs[0]) if os.path.isdir(dirs[0]) else {}
    heatmap = _HEATMAP.value if _HEATMAP.value is not None else settings.get("heatmap", False)
    fold = _FOLD.value if flags.FLAGS["fold"].present else settings.get("fold", [])
    baselines = (_BASELINES.value if _BASELINES.value is not None
                 else settings.get("baselines", False))
    aggregates = (_AGGREGATES.value if _AGGREGATES.value is not None
                  else settings.get("aggregates", False))
    runs = collect(dirs, out_dir, fold, heatmap=heatmap, baselines=baselines,
                   aggregates=aggregates)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  with open(os.path.join(out_dir, "results.md")) as f:
    print(f.read())
  print(f"{len(runs)} runs -> {os.path.join(out_dir, 'results.md')}, results.csv, "
        "results_cells.csv, "
        f"results_per_length.csv, plots/" + (", heatmaps/" if heatmap else ""))


if __name__ == "__main__":
  app.run(main)
