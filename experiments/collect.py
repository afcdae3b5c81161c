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
  (chance 0). Their numbers, a per-task **best** row and the chance row open ``results.md``.

The report depends on the runs' files only: rows sorted, floats in fixed formats, paths
relative, PNGs without a version stamp (``PNG_METADATA``), stale PNGs removed; collecting the
same runs twice gives the same bytes (with the same matplotlib).

Runs of the same scheme and task that differ in anything other than the seed (model mode,
positions kind, steps, preset, learning rate, ...) become separate rows, labelled with what differs,
e.g. ``rope [decoder]`` or ``rope [randomized]`` (the default contiguous positions are not
named). ``--fold=KEY,...`` treats those keys as further seeds instead (the papers' maximum over
seeds *and* learning rates: ``--fold=train.learning_rate``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

import numpy as np
from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Report folder (default: <first RUNS_DIR>/report).")
_FOLD = flags.DEFINE_list("fold", [], "Config keys whose values count as further seeds, "
                          "e.g. train.learning_rate.")
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
SETTINGS = ("heatmap", "fold")


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
             per_length_exact=_lengths(greedy.get("per_length_exact_match")))


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


def _short(key: str, value: Any) -> str:
  if key == "positions.kind" and value in ("contiguous", None):
    return ""  # the default sampler goes without saying: "rope" beside "rope [randomized]"
  if key in ("mode", "positions.kind", "preset"):
    return str(value)
  if key == "steps":
    return f"{value} steps"
  return f"{key.split('.')[-1]}={value}"


def label_runs(runs: list[Run], fold: Iterable[str] = (), log=print) -> list[Run]:
  """Sets each run's row label; drops duplicates (same label, task, seed and folded values).

  A label is the scheme plus the settings that tell apart runs of the same scheme and task:
  the model form (``mode``) where both forms ran it, and any other setting that differs
  between runs of the same scheme, task and form. Settings that come with the form (a
  decoder's pre-LN, say) are covered by the form and not repeated. ``variant`` is the label's
  settings without the form (the row name inside one form's heatmap).
  """
  fold = tuple(fold)
  groups: dict[tuple[str, str], list[Run]] = {}
  for r in runs:
    groups.setdefault((r.scheme, r.task), []).append(r)
  varying: set[str] = set()
  for members in groups.values():
    if "mode" not in fold and len({repr(m.attrs.get("mode")) for m in members}) > 1:
      varying.add("mode")
    forms: dict[str, list[Run]] = {}
    for m in members:
      forms.setdefault(repr(m.attrs.get("mode")), []).append(m)
    for same_form in forms.values():
      keys = set().union(*(m.attrs for m in same_form))
      for k in keys:
        if k not in fold and len({repr(m.attrs.get(k)) for m in same_form}) > 1:
          varying.add(k)
  order = sorted(varying, key=lambda k: (k != "mode", k != "positions.kind", k))
  kept, seen = [], {}
  for r in runs:
    extra = [(k, _short(k, r.attrs.get(k))) for k in order]
    extra = [(k, text) for k, text in extra if text]
    r.label = r.scheme + (f" [{', '.join(t for _, t in extra)}]" if extra else "")
    variant = [t for k, t in extra if k != "mode"]
    r.variant = r.scheme + (f" [{', '.join(variant)}]" if variant else "")
    key = (r.label, r.task, r.seed, tuple(repr(r.attrs.get(k)) for k in fold))
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
  return "\n".join(parts)


def _relpath(path: str, out_dir: str) -> str:
  """``path`` relative to the report folder, with ``/`` (the same text wherever the tree lies)."""
  return os.path.relpath(path, os.path.abspath(out_dir)).replace(os.sep, "/")


def write_csv(runs: list[Run], out_dir: str, fold: Sequence[str] = ()) -> None:
  fields = ["label", "scheme", "task", "seed", "mode", "preset", "steps", *fold,
            "in_range_score", "out_of_range_score", "greedy_in_range_exact_match",
            "greedy_out_of_range_exact_match", "config_hash", "done", "path"]
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
                  r.config_hash, int(r.done), _relpath(r.path, out_dir)])
  with open(os.path.join(out_dir, "results_per_length.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["label", "task", "seed", "length", "metric", "value"])
    for r in runs:
      for metric, values in (("accuracy", r.per_length), ("perplexity", r.per_length_perplexity or {}),
                             ("greedy_exact_match", r.per_length_exact or {})):
        for length in sorted(values):
          w.writerow([r.label, r.task, r.seed, length, metric, values[length]])


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


def _draw(ax, runs: list[Run], task: str, metric: str, colors: dict[str, Any]) -> None:
  data = curves(runs, task, metric)
  ranges = [r.train_range for r in runs if r.task == task]
  if ranges and metric == "accuracy":
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.5", alpha=0.12, lw=0)
  elif ranges:
    ax.axvline(max(r[1] for r in ranges), color="0.5", ls=":", lw=1)
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


def plot(runs: list[Run], out_dir: str) -> list[str]:
  """Per-task plots and one overview; returns the files written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  plot_dir = os.path.join(out_dir, "plots")
  os.makedirs(plot_dir, exist_ok=True)
  labels = sorted({r.label for r in runs})
  cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
  colors = {label: cmap(i % cmap.N) for i, label in enumerate(labels)}
  written = []
  acc_tasks = task_order(r.task for r in runs if r.per_length and not r.is_lm)
  for task in acc_tasks:
    fig, ax = plt.subplots(figsize=(7, 4))
    _draw(ax, runs, task, "accuracy", colors)
    ax.legend(fontsize=7, ncol=2 if len(labels) > 8 else 1, loc="lower left")
    fig.tight_layout()
    written.append(_save(fig, os.path.join(plot_dir, f"{task}.png")))
    plt.close(fig)
  for task in task_order(r.task for r in runs if r.is_lm):
    fig, ax = plt.subplots(figsize=(7, 4))
    _draw(ax, runs, task, "perplexity", colors)
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, os.path.join(plot_dir, f"{task}_perplexity.png")))
    plt.close(fig)
  if len(acc_tasks) > 1:
    ncols = min(5, len(acc_tasks))
    nrows = math.ceil(len(acc_tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows + 0.8), squeeze=False)
    for ax, task in zip(axes.flat, acc_tasks):
      _draw(ax, runs, task, "accuracy", colors)
    for ax in list(axes.flat)[len(acc_tasks):]:
      ax.axis("off")
    legend: dict[str, Any] = {}
    for ax in axes.flat:
      for handle, name in zip(*ax.get_legend_handles_labels()):
        legend.setdefault(name, handle)
    names, handles = sorted(legend), [legend[n] for n in sorted(legend)]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.12 if nrows == 1 else 0.06, 1, 1))
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
  """One form's scheme × task table of one metric: means over seeds (None: no run)."""

  form: str
  metric: str
  title: str
  rows: list[str]  # the runs' ``variant`` (scheme and settings, without the form)
  tasks: list[str]
  beyond: np.ndarray  # [rows, tasks] float, NaN where missing
  within: np.ndarray
  seeds: np.ndarray  # [rows, tasks] int: runs averaged (beyond-range values)
  chance: list[float]  # per task: the colour scale's floor

  def scaled(self, values: np.ndarray) -> np.ndarray:
    """``(value - chance) / (1 - chance)`` per task, clipped to [0, 1] (NaN stays NaN)."""
    floor = np.asarray(self.chance, dtype=float)[None, :]
    with np.errstate(invalid="ignore"):
      return np.clip((values - floor) / np.maximum(1.0 - floor, 1e-12), 0.0, 1.0)

  def best(self) -> list[list[str]]:
    """Per task, the rows with the highest mean beyond-range value at the printed precision
    (0.1 %), in row order; empty where no row has a value."""
    out = []
    for j in range(len(self.tasks)):
      col = self.beyond[:, j]
      shown = [None if math.isnan(v) else round(100 * v, 1) for v in col]
      top = max((v for v in shown if v is not None), default=None)
      out.append([] if top is None else [self.rows[i] for i, v in enumerate(shown) if v == top])
    return out


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
      shape = (len(rows), len(task_names))
      beyond, within = np.full(shape, np.nan), np.full(shape, np.nan)
      seeds = np.zeros(shape, dtype=int)
      for i, row in enumerate(rows):
        for j, task in enumerate(task_names):
          cell = [r for r in have if (r.variant or r.scheme) == row and r.task == task]
          b, w = stats([getattr(r, out_attr) for r in cell]), stats([getattr(r, in_attr) for r in cell])
          beyond[i, j] = np.nan if b["mean"] is None else b["mean"]
          within[i, j] = np.nan if w["mean"] is None else w["mean"]
          seeds[i, j] = b["n"]
      if form == "decoder" and metric == "accuracy":
        title = "teacher-forced accuracy"
      out.append(Heatmap(form, metric, title, rows, task_names, beyond, within, seeds,
                         [chance(t) if by_chance else 0.0 for t in task_names]))
  return out


def _heat_file(h: Heatmap) -> str:
  return f"{h.form}_{h.metric}.png"


def _count(n: int, noun: str) -> str:
  return f"{n} {noun}{'s' if n != 1 else ''}"


def _cell_pct(v: float) -> str:
  return "–" if math.isnan(v) else f"{100 * v:.1f}"


def heatmap_markdown(maps: Sequence[Heatmap], folder: str = "heatmaps") -> str:
  """The heatmaps' section of ``results.md``: each figure, its numbers and a best-scheme row."""
  if not maps:
    return ""
  parts = ["## Heatmaps: which encoding extrapolates", "",
           "Mean over seeds in %: beyond the training lengths, (in range) in brackets. Colours "
           "(figures) run from chance to 100% per task: (value − chance) / (1 − chance), chance "
           "being 1 / the task's output vocabulary (0 for exact match). **best** = the highest "
           "beyond-range mean (ties at 0.1% all listed).", ""]
  for h in maps:
    counts = sorted({int(n) for n in h.seeds.flat if n})
    seeds = (f"{counts[0]} seed{'s' if counts[0] != 1 else ''} per cell" if len(counts) == 1
             else f"{counts[0]}–{counts[-1]} seeds per cell")
    parts += [f"### {h.form}: {h.title}", "", f"![{h.form} {h.metric}]({folder}/{_heat_file(h)})",
              "", f"{_count(len(h.rows), 'row')} × {_count(len(h.tasks), 'task')}, {seeds}.", "",
              "| scheme | " + " | ".join(h.tasks) + " |", "|---|" + "---|" * len(h.tasks)]
    for i, row in enumerate(h.rows):
      cells = ["" if math.isnan(h.beyond[i, j]) and math.isnan(h.within[i, j])
               else f"{_cell_pct(h.beyond[i, j])} ({_cell_pct(h.within[i, j])})"
               for j in range(len(h.tasks))]
      parts.append(f"| {row} | " + " | ".join(cells) + " |")
    best = [", ".join(names) + (f": {_cell_pct(float(np.nanmax(h.beyond[:, j])))}" if names else "")
            for j, names in enumerate(h.best())]
    parts.append("| **best** | " + " | ".join(best) + " |")
    parts.append("| chance | " + " | ".join(f"{100 * c:.1f}" for c in h.chance) + " |")
    parts.append("")
  return "\n".join(parts)


def plot_heatmaps(maps: Sequence[Heatmap], out_dir: str) -> list[str]:
  """One PNG per heatmap (beyond range left, in range right); returns the files written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle

  folder = os.path.join(out_dir, "heatmaps")
  os.makedirs(folder, exist_ok=True)
  cmap = plt.get_cmap("viridis").with_extremes(bad="0.88")  # grey: no run
  written = []
  for h in maps:
    n_rows, n_cols = len(h.rows), len(h.tasks)
    width = 2 * (0.75 * n_cols + 0.6) + 3.2
    fig, axes = plt.subplots(1, 2, figsize=(width, 0.3 * n_rows + 2.6), squeeze=False,
                             layout="constrained")
    best = h.best()
    image = None
    for ax, values, name in zip(axes[0], (h.beyond, h.within), ("beyond the training lengths",
                                                                "in range")):
      scaled = h.scaled(values)
      image = ax.imshow(np.ma.masked_invalid(scaled), cmap=cmap, vmin=0.0, vmax=1.0,
                        aspect="auto", interpolation="nearest")
      for i in range(n_rows):
        for j in range(n_cols):
          if not math.isnan(values[i, j]):
            ax.text(j, i, f"{100 * values[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="black" if scaled[i, j] > 0.6 else "white")
      if values is h.beyond:
        for j, names in enumerate(best):
          for name_ in names:
            i = h.rows.index(name_)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
      ax.set_xticks(range(n_cols))
      ax.set_xticklabels([f"{t}\n(chance {100 * c:.0f}%)" for t, c in zip(h.tasks, h.chance)],
                         rotation=40, ha="right", fontsize=7)
      ax.set_yticks(range(n_rows))
      ax.set_yticklabels(h.rows, fontsize=7)
      ax.set_title(name, fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8,
                 label="(value − chance) / (1 − chance), per task")
    fig.suptitle(f"{h.form}: {h.title}, mean over seeds, % (red: best beyond range)", fontsize=10)
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
            heatmap: bool = False) -> list[Run]:
  """Reads every run under ``dirs`` and writes the CSVs, ``results.md`` and plots to ``out_dir``.

  With ``heatmap``, also ``heatmaps/<form>_<metric>.png`` and their section at the top of
  ``results.md``. PNGs in ``plots/`` and ``heatmaps/`` that this collect did not write (a task
  no longer present) are deleted, so the report is a function of the runs alone.
  """
  runs = label_runs(find_runs(dirs, log=log), fold, log=log)
  os.makedirs(out_dir, exist_ok=True)
  not_done = [r.path for r in runs if not r.done]
  if not_done:
    log(f"warning: {len(not_done)} run(s) have results.json but no DONE: {', '.join(not_done[:3])}")
  write_csv(runs, out_dir, fold)
  text = report_text(runs, heatmap)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(text)
  written = plot(runs, out_dir) if runs else []
  _remove_stale(os.path.join(out_dir, "plots"), written)
  if heatmap:
    _remove_stale(os.path.join(out_dir, "heatmaps"), plot_heatmaps(heatmaps(runs), out_dir))
  return runs


def report_text(runs: list[Run], heatmap: bool = False) -> str:
  """``results.md``: the tables of :func:`markdown`, after the heatmaps' section with ``heatmap``."""
  if not heatmap or not runs:
    return markdown(runs)
  return heatmap_markdown(heatmaps(runs)) + "\n## Every run\n\n" + markdown(runs)


def read_settings(folder: str) -> dict[str, Any]:
  """``<folder>/collect.json``: report settings kept with the runs (``{}`` without the file).

  Keys: ``heatmap`` (bool) and ``fold`` (a list of config keys), the flags of the same names;
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
  if not isinstance(data.get("heatmap", False), bool):
    raise ValueError(f"{path}: heatmap must be true or false, got {data['heatmap']!r}")
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
    runs = collect(dirs, out_dir, fold, heatmap=heatmap)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(report_text(runs, heatmap))
  print(f"{len(runs)} runs -> {os.path.join(out_dir, 'results.md')}, results.csv, "
        f"results_per_length.csv, plots/" + (", heatmaps/" if heatmap else ""))


if __name__ == "__main__":
  app.run(main)
