"""A sweep's root kept as data: which points are done, and what a finished point keeps.

A run writes ``results.json`` only after its evaluation has finished, with the hash of its
config (``posenc.setup.config_hash``) inside. So a point whose workdir holds a ``results.json``
carrying the point's own config hash is done, whatever else the folder holds: neither its
``checkpoints/`` nor its ``DONE`` marker is needed. That is what lets a sweep's results be
committed to git (``experiments/atlas/``: each point's ``results.json`` and ``config.json``) and
resumed from a fresh clone: ``experiments.sweep`` skips the committed points and runs the rest.

A point whose folder holds results of a *different* config (the config's defaults changed since
it was run) is not done; running it stops at ``posenc.setup.check_workdir``'s "holds a run with a
different config" error, so a stale result is never silently overwritten: delete its folder to
redo it.

:func:`prune` removes what a finished point no longer needs (its checkpoints and TensorBoard
events), so that a root filled by a long sweep holds small files only; ``experiments.sweep``
calls it after each point when the sweep config sets ``sweep.prune_finished``.
"""

from __future__ import annotations

import json
import os
import shutil

RESULTS = "results.json"
# What a finished point can lose: the bulk of a run folder, none of its results.
PRUNED = ("checkpoints", "tensorboard")


def results_hash(workdir: str) -> str | None:
  """The config hash recorded in ``workdir/results.json`` (None: absent, unreadable, no hash)."""
  path = os.path.join(workdir, RESULTS)
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError):
    return None
  value = results.get("config_hash") if isinstance(results, dict) else None
  return value if isinstance(value, str) and value else None


def committed(workdir: str, config_hash: str) -> bool:
  """Whether ``workdir`` holds the finished results of the config whose hash is ``config_hash``."""
  return bool(config_hash) and results_hash(workdir) == config_hash


def prune(workdir: str, config_hash: str) -> list[str]:
  """Deletes a finished point's checkpoints and TensorBoard events; returns what was removed.

  Nothing is touched unless the point is :func:`committed` with ``config_hash`` (an unfinished
  point needs its checkpoints to resume), and nothing while a run holds the workdir's lock
  (``posenc.workdir_lock``): a run writes ``results.json`` a moment before it ends, and a sweep
  worker sharing the root must not delete what that run may still be closing; the run's own
  worker prunes its point once the run has ended.
  """
  if not committed(workdir, config_hash):
    return []
  from posenc import workdir_lock
  try:
    lock = workdir_lock.acquire(workdir)
  except workdir_lock.WorkdirLocked:
    return []
  removed = []
  with lock:
    for name in PRUNED:
      path = os.path.join(workdir, name)
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
        removed.append(path)
  return removed
