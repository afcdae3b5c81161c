"""A run's results: ``results.json``, its plots and the ``DONE`` marker.

``results.json`` holds the per-length scores of the final evaluation, their means inside and
beyond the training lengths (:func:`summarize`; ``score`` is the one beyond), the config hash,
timings, and what the task or scheme adds (greedy decoding, a language model's protocols,
``encoding_report``). With ``num_seeds > 1`` each seed's results go to
``seeds/seed<k>/results.json`` and the top-level file holds their mean curve, with each seed's
range scores and their max and standard deviation. ``DONE`` (written last, holding the config
hash) marks the run finished: :func:`finished` returns its results instead of running again.
"""

from __future__ import annotations

import json
import math
import os
from typing import Callable

import numpy as np

from posenc import encodings, reporting
from posenc.setup import Setup


def results_path(s: Setup) -> str:
  return os.path.join(s.workdir, "results.json")


def done_path(s: Setup) -> str:
  return os.path.join(s.workdir, "DONE")


def finished(s: Setup) -> dict | None:
  """The results of this very run (``DONE`` holds its config hash), or None if it is not done."""
  if os.path.exists(done_path(s)) and os.path.exists(results_path(s)):
    with open(done_path(s)) as f:
      done_hash = f.read().strip()
    if done_hash == s.config_hash:  # the same run finished: nothing to redo
      with open(results_path(s)) as f:
        return json.load(f)
  return None


def _nanmean(values) -> float:
  """Mean over the finite values; NaN (without numpy's warning) when there are none."""
  finite = [v for v in values if not math.isnan(v)]
  return float(np.mean(finite)) if finite else float("nan")


def summarize(s: Setup, per_length: dict[int, float]) -> dict:
  lo, hi = s.config.task.train_min_length, s.config.task.train_max_length

  def mean(sel):
    vals = [v for l, v in per_length.items() if sel(l) and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None

  return {"in_range_score": mean(lambda l: lo <= l <= hi),
          "out_of_range_score": mean(lambda l: l > hi)}


def assemble(s: Setup, per_length, greedy, extra: dict, reports: list[dict], *, n_params: int,
             timing: dict, tracker=None, steps_trained: int | None = None
             ) -> tuple[dict, list[dict]]:
  """``(results, seed_results)``: the content of ``results.json`` and of each seed's.

  ``per_length``: ``{length: score}``, a list of them per seed with several seeds; ``greedy``:
  ``[exact match, token accuracy]``, each a list of per-seed ``{length: value}`` (None without
  greedy decoding); ``extra``: what a task with its own evaluation returned besides its
  per-length scores (its range scores are taken out of it); ``reports``: each seed's
  :func:`posenc.evaluation.encoding_report`; ``n_params``: over all seeds; ``tracker``: the
  training criterion's (:class:`posenc.criterion.Tracker`), whose record of each seed goes
  into its ``"criterion"`` (learned, the step, the in-range curve); ``steps_trained``: the
  step training ended at (the cap, or earlier at the criterion).
  """
  config = s.config
  S = config.num_seeds
  task_evaluates = hasattr(s.task, "evaluate")
  if task_evaluates:
    summary = {k: extra.pop(k) for k in ("in_range_score", "out_of_range_score")}
  per_seed = per_length if S > 1 else [per_length]

  def greedy_of(k):  # seed k's greedy-decoding metrics, or the seeds' mean (k=None)
    if not config.eval.greedy or task_evaluates:
      return {}
    pick = lambda m: greedy[m][k] if k is not None else {
        l: _nanmean([g[l] for g in greedy[m]]) for l in greedy[m][0]}
    exact, tokens = pick(0), pick(1)
    ranges = summarize(s, exact)
    return {"greedy": {
        "per_length_exact_match": {str(l): v for l, v in sorted(exact.items())},
        "per_length_token_accuracy": {str(l): v for l, v in sorted(tokens.items())},
        "in_range_exact_match": ranges["in_range_score"],
        "out_of_range_exact_match": ranges["out_of_range_score"]}}

  # what an "auto" option of the scheme resolved to for this run (FLOATER's flow)
  resolver = getattr(encodings.get(config.encoding.name), "resolved", None)
  resolved = resolver(config.encoding, s.train_positions()) if callable(resolver) else {}

  def criterion_of(k):  # seed k's record, or for the seeds' aggregate all of them
    if k is not None:
      rec = tracker.seed_record(k)
      return {"criterion": rec, "learned": rec["learned"],
              "steps_trained": rec["step"] if rec["learned"] and rec["stop"] else steps_trained}
    recs = [tracker.seed_record(j) for j in range(S)]
    return {"criterion_per_seed": recs, "learned_seeds": sum(r["learned"] for r in recs),
            "steps_trained": steps_trained}

  def results_of(per_length, summary, seed, k=None):
    return {
        "scheme": config.encoding.name, "task": config.task.name, "preset": config.preset,
        "seed": seed, "config_hash": s.config_hash, "steps": config.train.steps,
        "train_range": [config.task.train_min_length, config.task.train_max_length],
        "eval_range": [config.eval.min_length, config.eval.max_length],
        "per_length": {str(k): v for k, v in sorted(per_length.items())},
        **summary, "score": summary["out_of_range_score"],
        "eval_programs": len(s.eval_buckets), "num_params": n_params // S,
        "timing": dict(timing),
        "mode": "decoder" if s.causal else "encoder", **extra, **greedy_of(k),
        **({"encoding_resolved": resolved} if resolved else {}),
        **({} if tracker is None else criterion_of(k)),
        **({} if not reports[0] else {"encoding_report": reports[k]} if k is not None
           else {"encoding_report_per_seed": reports}),
    }

  seed_results = []
  for k, pl in enumerate(per_seed):
    seed_results.append(results_of(pl, summary if task_evaluates else summarize(s, pl),
                                   config.seed + k, k))
  if S == 1:
    return seed_results[0], seed_results
  # one results.json per seed under seeds/, and their aggregate at the top
  mean_pl = {l: _nanmean([pl[l] for pl in per_seed]) for l in per_seed[0]}
  results = results_of(mean_pl, summarize(s, mean_pl), config.seed)
  results["num_seeds"] = S
  results["seeds"] = [r["seed"] for r in seed_results]
  for key in ("in_range_score", "out_of_range_score"):
    vals = [r[key] for r in seed_results if r[key] is not None]
    results[key + "_per_seed"] = vals
    if vals:
      results[key + "_max"] = float(np.max(vals))
      results[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
  return results, seed_results


def chance_level(task) -> float | None:
  """The accuracy of guessing uniformly, drawn as the ``chance`` line of ``plots/accuracy.png``:
  ``1 / task.output_vocab_size`` (single-answer tasks: one over the number of classes; sequence
  tasks: per token, one over the output alphabet); None for a task without an output vocabulary."""
  size = getattr(task, "output_vocab_size", 0)
  return 1.0 / size if isinstance(size, int) and size > 0 else None


def write(s: Setup, results: dict, seed_results: list[dict]) -> None:
  """Writes ``results.json`` (and each seed's), the plots (``config.plots``), and ``DONE`` last
  (process 0 only). ``plots/accuracy.png`` carries a ``chance`` line (:func:`chance_level`)."""
  config, wd = s.config, s.workdir
  S = config.num_seeds
  title = f"{config.encoding.name} on {config.task.name}"

  chance = chance_level(s.task)

  def greedy_curve(r):
    return {"greedy exact match": r["greedy"]["per_length_exact_match"]} if "greedy" in r else None

  plots = config.get("plots", True)
  for r in seed_results if S > 1 else []:
    sub = os.path.join(wd, "seeds", f"seed{r['seed']}")
    os.makedirs(sub, exist_ok=True)
    reporting.atomic_write_json(os.path.join(sub, "results.json"), r)
    if plots:
      reporting.plot_accuracy(os.path.join(sub, "plots", "accuracy.png"), r["per_length"],
                              tuple(r["train_range"]), f"{title} (seed {r['seed']})",
                              extra=greedy_curve(r), chance=chance)
  reporting.atomic_write_json(results_path(s), results)
  if plots:
    if hasattr(s.task, "plot"):
      s.task.plot(results, os.path.join(wd, "plots"), title)
    else:
      reporting.plot_accuracy(os.path.join(wd, "plots", "accuracy.png"), results["per_length"],
                              tuple(results["train_range"]),
                              title + (f" (mean of {S} seeds)" if S > 1 else ""),
                              extra=greedy_curve(results), chance=chance)
    reporting.plot_training(os.path.join(wd, "plots", "training.png"), reporting.read_metrics(wd))
  reporting.atomic_write_text(done_path(s), f"{s.config_hash}\n")


def log_summary(s: Setup, results: dict, log: Callable[[str], None]) -> None:
  """The run's last lines: greedy exact match (if decoded) and the range scores."""
  S = s.config.num_seeds
  fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
  what = "score (bits per byte)" if hasattr(s.task, "evaluate") else "accuracy"
  if "greedy" in results:
    g = results["greedy"]
    log(f"greedy decoding: in-range exact match {fmt(g['in_range_exact_match'])}, beyond "
        f"training {fmt(g['out_of_range_exact_match'])}")
  log(f"done: in-range {what} {fmt(results['in_range_score'])}, beyond training "
      f"{fmt(results['out_of_range_score'])}" + (f" (mean of {S} seeds)" if S > 1 else "")
      + f"; results in {results_path(s)}")
