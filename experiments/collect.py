"""Tables and plots from any set of runs: every ``results.json`` under the given folders.

  python -m experiments.collect /work/sweep_runs                     # report in <dir>/report
  python -m experiments.collect runs/a runs/b --out=report --fold=train.learning_rate

Writes to ``--out``:

* ``results.csv`` — one row per run (scheme, variant, task, seed, scores, path, ...);
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

Runs of the same scheme and task that differ in anything other than the seed (model mode,
positions kind, steps, preset, learning rate, ...) become separate rows, labelled with what differs,
e.g. ``rope [decoder]``. ``--fold=KEY,...`` treats those keys as further seeds instead (the
papers' maximum over seeds *and* learning rates: ``--fold=train.learning_rate``).
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

# Config fields that never make two runs different experiments.
_IGNORED = ("seed", "workdir", "task.name", "encoding.name", "num_seeds", "init", "checkpoint",
            "train.log_every", "model.causal", "train.steps", "sweep")
_LEVEL_ORDER = {"R": 0, "DCF": 1, "CS": 2}


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
  if key in ("mode", "positions.kind", "preset"):
    return str(value)
  if key == "steps":
    return f"{value} steps"
  return f"{key.split('.')[-1]}={value}"


def label_runs(runs: list[Run], fold: Iterable[str] = (), log=print) -> list[Run]:
  """Sets each run's row label; drops duplicates (same label, task, seed and folded values)."""
  fold = tuple(fold)
  groups: dict[tuple[str, str], list[Run]] = {}
  for r in runs:
    groups.setdefault((r.scheme, r.task), []).append(r)
  varying: set[str] = set()
  for members in groups.values():
    keys = set().union(*(m.attrs for m in members))
    for k in keys:
      if k not in fold and len({repr(m.attrs.get(k)) for m in members}) > 1:
        varying.add(k)
  order = sorted(varying, key=lambda k: (k != "mode", k != "positions.kind", k))
  kept, seen = [], {}
  for r in runs:
    extra = [_short(k, r.attrs.get(k)) for k in order]
    r.label = r.scheme + (f" [{', '.join(extra)}]" if extra else "")
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
                  r.config_hash, int(r.done), r.path])
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
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
  return path


def collect(dirs: Sequence[str], out_dir: str, fold: Sequence[str] = (), log=print) -> list[Run]:
  """Reads every run under ``dirs`` and writes the CSVs, ``results.md`` and plots to ``out_dir``."""
  runs = label_runs(find_runs(dirs, log=log), fold, log=log)
  os.makedirs(out_dir, exist_ok=True)
  not_done = [r.path for r in runs if not r.done]
  if not_done:
    log(f"warning: {len(not_done)} run(s) have results.json but no DONE: {', '.join(not_done[:3])}")
  write_csv(runs, out_dir, fold)
  text = markdown(runs)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(text)
  if runs:
    plot(runs, out_dir)
  return runs


def main(argv):
  dirs = argv[1:]
  if not dirs:
    raise app.UsageError("name one or more folders holding runs: "
                         "python -m experiments.collect RUNS_DIR... [--out DIR]")
  out_dir = _OUT.value or os.path.join(dirs[0], "report")
  try:
    runs = collect(dirs, out_dir, _FOLD.value)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(markdown(runs))
  print(f"{len(runs)} runs -> {os.path.join(out_dir, 'results.md')}, results.csv, "
        f"results_per_length.csv, plots/")


if __name__ == "__main__":
  app.run(main)
