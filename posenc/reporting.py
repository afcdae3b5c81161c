"""Run outputs: metrics.jsonl, TensorBoard events, progress lines, atomic writes, plots."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` via a temporary file and ``os.replace``: never half-written."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


class MetricsWriter:
  """Appends one JSON object per logged step to ``metrics.jsonl`` (+ TensorBoard events)."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0,
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._truncate_after(resume_step)
    if not tensorboard:
      return
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
    except ImportError:  # TensorBoard events are optional
      self._tb = None

  def _truncate_after(self, step: int) -> None:
    """On resume, drop lines logged after the checkpoint we restarted from."""
    if not os.path.exists(self.path):
      return
    keep = []
    with open(self.path) as f:
      for line in f:
        try:
          if json.loads(line).get("step", 0) <= step:
            keep.append(line)
        except json.JSONDecodeError:  # a line cut by a kill
          continue
    atomic_write_text(self.path, "".join(keep))

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          pass
  return rows


class Progress:
  """One line per log step: step, metrics, steps/s and ETA (compile time excluded)."""

  def __init__(self, total_steps: int, start_step: int, stream=sys.stdout):
    self.total = total_steps
    self.stream = stream
    self._t0 = None
    self._s0 = start_step

  def started(self, step: int) -> None:
    """Call once the first (compiling) step has finished."""
    self._t0, self._s0 = time.perf_counter(), step

  def line(self, step: int, metrics: dict, extra: str = "") -> str:
    rate = eta = None
    if self._t0 is not None and step > self._s0:
      rate = (step - self._s0) / (time.perf_counter() - self._t0)
      eta = (self.total - step) / rate
    parts = [f"step {step:>{len(str(self.total))}}/{self.total}"]
    parts += [f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
    if rate:
      parts.append(f"{rate:.1f} steps/s")
      parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    if extra:
      parts.append(extra)
    text = " | ".join(parts)
    print(text, file=self.stream, flush=True)
    return text


def plot_accuracy(path: str, per_length: dict, train_range: tuple[int, int], title: str,
                  ylabel: str = "accuracy", extra: dict | None = None,
                  chance: float | None = None) -> None:
  """Accuracy (or another metric) against length, the training range shaded.

  ``extra`` maps a label to another per-length curve drawn on the same axes (greedy
  exact match next to teacher-forced accuracy); ``chance``: a dashed horizontal line.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  def curve(d):
    lengths = sorted(int(k) for k in d)
    return lengths, [d[str(l)] if str(l) in d else d[l] for l in lengths]

  fig, ax = plt.subplots(figsize=(7, 4))
  ax.axvspan(train_range[0] - 0.5, train_range[1] + 0.5, color="tab:green", alpha=0.12,
             label=f"training lengths {train_range[0]}–{train_range[1]}")
  greedy = any("greedy" in label for label in (extra or {}))
  ax.plot(*curve(per_length), marker=".", lw=1,
          label="teacher-forced accuracy" if greedy else ylabel)
  for label, d in (extra or {}).items():
    ax.plot(*curve(d), marker=".", lw=1, label=label)
  if chance is not None:
    ax.axhline(chance, ls="--", color="gray", lw=1, label="chance")
  ax.set_xlabel("input length")
  ax.set_ylabel(ylabel)
  ax.set_ylim(0, 1.02)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_training(path: str, rows: list[dict], keys=("loss", "accuracy")) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = [k for k in keys if any(k in r for r in rows)]
  if not rows or not keys:
    return
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5))
  axes = np.atleast_1d(axes)
  for ax, key in zip(axes, keys):
    pts = [(r["step"], r[key]) for r in rows if key in r]
    ax.plot([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=110)
  os.replace(tmp, path)
