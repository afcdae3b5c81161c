"""Helpers shared by tests: tiny configs and in-process smoke runs."""

from __future__ import annotations

import importlib
from typing import Any

import ml_collections

from posenc import train


def config(scheme: str, preset: str = "smoke", **overrides: Any) -> ml_collections.ConfigDict:
  """``configs/<scheme>.py:<preset>`` with dotted overrides, e.g. ``**{"model.causal": True}``."""
  c = importlib.import_module(f"configs.{scheme}").get_config(preset)
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    if last not in node:
      raise KeyError(f"no config field {key}")
    node[last] = value
  return c


def run_smoke(tmp_path, scheme: str, **overrides: Any) -> dict:
  """Runs ``experiments.run`` in-process on the smoke preset; returns ``results.json``'s content."""
  c = config(scheme, **overrides)
  c.workdir = str(tmp_path / f"{scheme}-run")
  return train.train_and_evaluate(c, log=lambda *_: None)


def check_smoke_results(results: dict) -> None:
  """What every smoke run must produce: finite scores for every evaluated length."""
  import math
  lo, hi = results["eval_range"]
  assert sorted(int(k) for k in results["per_length"]) == list(range(lo, hi + 1))
  assert all(0.0 <= v <= 1.0 for v in results["per_length"].values() if not math.isnan(v))
  assert results["in_range_score"] is not None and 0.0 <= results["in_range_score"] <= 1.0


def warm_start_further(tmp_path, scheme: str, source: str, max_length: int, **overrides: Any) -> dict:
  """Re-evaluates the trained run ``source`` out to ``max_length`` (a warm start with no
  training step); checks that every parameter loaded; returns its results."""
  c = config(scheme, **overrides, **{"init.from_workdir": source, "train.steps": 0,
                                     "eval.max_length": max_length})
  c.workdir = str(tmp_path / "warm")
  logs = []
  warm = train.train_and_evaluate(c, log=logs.append)
  started = [line for line in logs if line.startswith("warm start:")]
  assert started and " 0 fresh" in started[0], logs
  check_smoke_results(warm)
  return warm
