"""The list of plots and the loop that draws every one that applies to a run.

To add a plot: write ``plot_<what>(ctx: Context) -> str | list[str]`` in a module of its own
(see ``bias_vs_distance.py`` for the shape), raising ``NotApplicable`` for runs of other scheme
families and ``Skip`` when it applies but cannot be drawn, and add it to :data:`PLOTS`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from posenc.inspect.attention_maps import plot_attention
from posenc.inspect.bias_vs_distance import plot_bias_vs_distance
from posenc.inspect.context import Context, NotApplicable, Skip
from posenc.inspect.floater_trajectory import plot_floater
from posenc.inspect.position_similarity import plot_position_similarity
from posenc.inspect.report import first_line
from posenc.inspect.rotary_frequencies import plot_rotary_frequencies

# (the file name(s) a plot writes, as notes name them; the function), in drawing order.
PLOTS: list[tuple[str, Callable[[Context], Any]]] = [
    ("position_similarity.png", plot_position_similarity),
    ("bias_vs_distance.png", plot_bias_vs_distance),
    ("rotary_frequencies.png", plot_rotary_frequencies),
    ("floater_*.png", plot_floater),
    ("attention_*.png", plot_attention),
]


def make_plots(ctx: Context) -> list[str]:
  """Every plot that applies; returns the paths written, printing ``plot: PATH`` for each.

  First says where the PNGs go (``plots: writing PNGs into DIR``, absolute), then one line per
  file written (absolute path), and last ``plots: N PNG(s) in DIR`` (or that none was written).
  One that cannot be made is named in a one-line ``note: skipped ...`` saying why (plots skipped
  for the same reason share the line); those of other scheme families are listed on one line.
  """
  folder = os.path.abspath(ctx.out)
  print(f"plots: writing PNGs into {folder}")
  written: list[str] = []
  skipped: dict[str, list[str]] = {}
  other_family: list[str] = []
  for name, fn in PLOTS:
    try:
      got = fn(ctx)
    except NotApplicable:
      other_family.append(name)
      continue
    except Skip as e:
      skipped.setdefault(str(e), []).append(name)
      continue
    except Exception as e:  # noqa: BLE001 — one failing plot must not stop the others
      skipped.setdefault(f"it failed ({first_line(e)})", []).append(name)
      continue
    for path in [got] if isinstance(got, str) else got:
      path = os.path.abspath(path)
      print(f"plot: {path}")
      written.append(path)
  for reason, names in skipped.items():
    print(f"note: skipped {', '.join(names)}: {reason}")
  if other_family:
    print(f"(not for this scheme: {', '.join(other_family)})")
  print(f"plots: {len(written)} PNG{'' if len(written) == 1 else 's'} in {folder}" if written
        else f"plots: none written (see the notes above); {folder} is unchanged")
  return written
