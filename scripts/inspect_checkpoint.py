"""Inspect a run's checkpoint: its parameters, config and metrics, and (``--plots``) what it learned.

  python -m scripts.inspect_checkpoint WORKDIR [--step N] [--plots] [--out DIR] [--long_length L]

The text report reads only the workdir's own files — the orbax checkpoint, ``config.json``,
``metrics.jsonl`` and ``results.json`` — so it works even when the run's scheme, task or config
file no longer exists (or has changed) in this checkout. It prints every parameter (path, shape,
dtype, count, mean, std), the total, the run's config and a metrics summary.

``--plots`` writes PNGs into ``WORKDIR/inspect/`` (or ``--out``) and prints where: the folder
first, then ``plot: PATH`` per file (absolute paths), one per scheme family found by
its parameter names and public functions: position similarity, bias vs distance, rotary
frequencies, FLOATER's trajectory, attention maps. What each shows, and how it is found, is in
``posenc/inspect/`` (the package docstring and one module per figure); this file is only the
command line.

A missing workdir, a workdir without checkpoints, a missing step, a damaged checkpoint or a bad
argument end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from posenc.inspect import InspectError, inspect, report
from posenc.inspect.attention_maps import DEFAULT_LONG_CAP

__all__ = ["InspectError", "inspect", "main"]

USAGE = ("python -m scripts.inspect_checkpoint WORKDIR [--step N] [--plots] [--out DIR] "
         "[--long_length L]")


class _Parser(argparse.ArgumentParser):
  def error(self, message: str):  # one line and status 2, not the usage text
    raise InspectError(f"{message}; usage: {USAGE}")


def _print_error(message: str) -> None:
  """``error: MESSAGE`` on one line, on the real stderr even while a failed restore silences it."""
  sys.stderr.flush()
  os.write(report.stderr_fd(), ("error: " + " ".join(message.split()) + "\n").encode())


def main(argv: list[str] | None = None, *, exiting: bool = False) -> int:
  """Runs the command line; returns the exit status (2: bad input, with one line on stderr).

  ``exiting``: the process ends right after (``__main__``), so stderr may stay silenced after a
  damaged checkpoint (tensorstore's threads may still be printing; see ``report._quiet_stderr``).
  """
  parser = _Parser(prog="python -m scripts.inspect_checkpoint", description=__doc__.split("\n")[0])
  parser.add_argument("workdir", help="a run's folder (the --workdir of experiments.run)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  parser.add_argument("--plots", action="store_true",
                      help="also write PNGs into WORKDIR/inspect/ (or --out), printing each path "
                           "(see posenc/inspect)")
  parser.add_argument("--out", default=None, help="folder for the PNGs (default: WORKDIR/inspect)")
  parser.add_argument("--long_length", type=int, default=0,
                      help=f"input length of the long attention map (default: eval.max_length, "
                           f"at most {DEFAULT_LONG_CAP})")
  try:
    args = parser.parse_args(argv)
    for name in ("absl", "orbax", "jax"):
      logging.getLogger(name).setLevel(logging.ERROR)
    inspect(args.workdir, args.step, args.plots, args.out, args.long_length)
  except InspectError as e:
    _print_error(str(e))
    if not exiting:
      report.restore_stderr()
    return 2
  finally:
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # inspection never needs an accelerator
  status = main(exiting=True)
  sys.stdout.flush()
  # Exit at once: after a damaged checkpoint, tensorstore's threads may still be printing.
  os._exit(status)
