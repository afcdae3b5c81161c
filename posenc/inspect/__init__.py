"""Inspecting a finished (or running) run: what its checkpoint holds, and what its scheme learned.

``python -m scripts.inspect_checkpoint WORKDIR [--plots]`` is the command line; this package does
the work, and :func:`inspect` is its front door (usable from a notebook).

Reads (never writes) the run's folder: the orbax checkpoint under ``WORKDIR/checkpoints``
(restored from its own metadata, without the run's code), ``config.json``, ``metrics.jsonl``,
``results.json`` and ``DONE``. Prints the text report to stdout (``report.describe``).

Writes, only with ``plots=True``, PNGs into ``out`` (default ``WORKDIR/inspect/``; created if
missing; each written under a temporary name and renamed, by ``figures.save``, the package's only
file write), one module per figure, chosen by the run's parameter names and its scheme module's
hooks and public functions, never by the scheme's name:

* ``position_similarity.png`` (``position_similarity.py``) — ``cos(p_i, p_j)`` of absolute
  position vectors: a saved 2-D ``encoding/table`` (learned, hierarchical) needs no code;
  otherwise the scheme's ``embed`` hook on a zero input at positions ``0..N``; for a scheme that
  solves a position table from its parameters (FLOATER), also that table's rows as the model adds
  them (and centred).
* ``bias_vs_distance.png`` (``bias_vs_distance.py``) — each head's additive logit term against
  ``i − j`` (schemes with a ``logits`` hook: ALiBi, KERPLE, Sandwich, FIRE, T5, ...).
* ``rotary_frequencies.png`` (``rotary_frequencies.py``) — ``θ_m`` and wavelengths (modules with
  ``frequencies``: RoPE, xPos), with the scaled frequencies of the longest evaluated program.
* ``floater_trajectory.png``, ``floater_vs_sinusoidal.png`` (``floater_trajectory.py``) —
  FLOATER's solved positions and their similarity next to the sinusoidal table's.
* ``attention_train.png`` / ``attention_long.png`` (``attention_maps.py``) — every layer's and
  head's attention for one sample at the longest training length and at a longer one.

Prints where the PNGs go (``plots: writing PNGs into DIR``), ``plot: PATH`` per file written
(absolute paths) and a last ``plots: N PNGs in DIR`` line. A plot that needs the current code (the model rebuilt
from ``config.json`` with ``posenc.setup.setup``, see ``context.Context``) is skipped with a
one-line ``note:`` when the scheme's module is missing or the saved parameters do not fit it.
Problems with the folder itself (missing, no checkpoints, missing step, damaged checkpoint)
raise :class:`InspectError` with a one-line message.
"""

from __future__ import annotations

import os
import sys

from posenc.inspect.report import InspectError, describe, read_json_dict, read_metrics, read_state


def inspect(workdir: str, step: int | None = None, plots: bool = False, out: str | None = None,
            long_length: int = 0) -> dict:
  """Prints the report (and writes plots); returns ``{step, params, config, plots}``.

  ``step``: the checkpoint to read (default: the latest). ``out``: the plots' folder (default:
  ``WORKDIR/inspect``). ``long_length``: input length of the long attention map (0: the longest
  evaluated, at most ``attention_maps.DEFAULT_LONG_CAP``).
  """
  step, steps, state = read_state(workdir, step)
  config = read_json_dict(os.path.join(workdir, "config.json"))
  results = read_json_dict(os.path.join(workdir, "results.json"))
  for line in describe(workdir, step, steps, state, config, read_metrics(workdir), results):
    print(line)
  written = []
  if plots:
    from posenc.inspect.context import Context
    from posenc.inspect.plots import make_plots
    ctx = Context(workdir, config, state["params"], out or os.path.join(workdir, "inspect"),
                  long_length)
    written = make_plots(ctx)
  sys.stdout.flush()
  return {"step": step, "params": state["params"], "config": config, "plots": written}


__all__ = ["InspectError", "inspect"]
