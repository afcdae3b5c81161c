"""The points of a sweep: which schemes and tasks exist, the command-line filters, the grid.

A sweep file (``configs/sweeps/<name>.py``, format in :mod:`configs.sweeps`) lists its points
with these helpers: flat override dicts such as
``{"scheme": "rope", "task.name": "parity_check", "seed": 1}``. They live in the library, below
the configs, because what they know is the library's: a scheme's ``MODES``
(:mod:`posenc.encodings`) and a task's ``level`` (:mod:`posenc.tasks`). So new schemes and tasks
join every sweep that asks for "all encoder schemes" or "the Chomsky-hierarchy tasks" by
themselves. Resolving points into run configs and running them is the experiments layer's
(:mod:`experiments.sweeping`).

Filters are the comma-separated strings of a sweep config's ``sweep`` block
(``sweep.schemes``, ``sweep.tasks``, ``sweep.learning_rates``; "" = everything / no axis), so
``--config.sweep.schemes=rope,alibi`` narrows a sweep; a name the filter cannot take is a
:class:`~posenc.errors.ConfigError` naming the field (``config.sweep.schemes``). A filter never
reorders: the points keep the discovered order whatever order the filter was typed in, so a
point's index means the same run.

The config helpers :func:`flatten` and :func:`set_field` are here too: sweeps set fields by
dotted name, and a name that is no field is an error naming it.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from posenc import encodings, tasks
from posenc.errors import ConfigError

# The point key that swaps the whole encoding block (see experiments.sweeping).
SCHEME_KEY = "scheme"
# The levels of the Chomsky hierarchy the tasks of Delétang et al. (2023) are sorted into.
CHOMSKY_LEVELS = ("R", "DCF", "CS")
# Names the language-modelling task may land under (the first present is used).
LM_TASK_NAMES = ("lm", "language_modelling", "language_modeling", "byte_lm")

Point = Mapping[str, Any]


# ----------------------------------------------------------------------------- discovery


def schemes(mode: str) -> list[str]:
  """Every scheme whose ``MODES`` include ``mode`` ("encoder" or "decoder"), by name."""
  return [n for n in encodings.names() if mode in encodings.get(n).MODES]


def tasks_at(levels: Sequence[str]) -> list[str]:
  """Every task whose ``level`` is one of ``levels`` (e.g. ``CHOMSKY_LEVELS``, "decoder"), by name."""
  reg = tasks.registry()
  return [n for n in sorted(reg) if reg[n].level in levels]


def lm_task() -> str | None:
  """The language-modelling task's name, or None while it has not landed."""
  known = tasks.names()
  return next((n for n in LM_TASK_NAMES if n in known), None)


# ----------------------------------------------------------------------------- filters


def selected(field: str, value: str, available: Sequence[str], everything: Sequence[str],
             why: str) -> list[str]:
  """Parses a comma-separated filter against ``available`` (``""``: all of them).

  ``everything`` is what the filter may name at all (an unknown name: "unknown ..."); a name
  there but not ``available`` gets ``why`` ("is not valid in an encoder"). The result keeps
  ``available``'s order whatever the filter's, so a point's index does not depend on how the
  filter was typed.
  """
  if not value.strip():
    return list(available)
  chosen = set()
  for item in (v.strip() for v in value.split(",")):
    if not item:
      continue
    if item not in everything:
      raise ConfigError(field, f"unknown {item!r}; choose from: {', '.join(everything)}")
    if item not in available:
      raise ConfigError(field, f"{item!r} {why}; this sweep takes: {', '.join(available)}")
    chosen.add(item)
  return [a for a in available if a in chosen]


def schemes_for(mode: str, config: ml_collections.ConfigDict) -> list[str]:
  """:func:`schemes` of ``mode`` that ``config.sweep.schemes`` keeps."""
  return selected("config.sweep.schemes", config.sweep.schemes, schemes(mode),
                  encodings.names(), f"is not valid in an {mode}")


def tasks_of_levels(config: ml_collections.ConfigDict, levels: Sequence[str],
                    what: str = "a Chomsky-hierarchy task") -> list[str]:
  """:func:`tasks_at` ``levels`` that ``config.sweep.tasks`` keeps (``what``: for the error)."""
  return selected("config.sweep.tasks", config.sweep.tasks, tasks_at(levels), tasks.names(),
                  f"is not {what}")


def chomsky_tasks(config: ml_collections.ConfigDict) -> list[str]:
  """The Chomsky-hierarchy tasks (levels R, DCF, CS) that ``config.sweep.tasks`` keeps."""
  return tasks_of_levels(config, CHOMSKY_LEVELS)


def learning_rates(config: ml_collections.ConfigDict) -> list[float]:
  """``config.sweep.learning_rates`` parsed ("" gives [], i.e. no learning-rate axis)."""
  out = []
  for item in (v.strip() for v in config.sweep.learning_rates.split(",")):
    if item:
      try:
        out.append(float(item))
      except ValueError:
        raise ConfigError("config.sweep.learning_rates",
                          f"{item!r} is not a number; give e.g. 1e-4,3e-4") from None
  return out


# ----------------------------------------------------------------------------- the grid


def grid(axes: Mapping[str, Iterable[Any]],
         first: Sequence[str] = (SCHEME_KEY, "task.name")) -> list[dict[str, Any]]:
  """The product of ``axes``, the *last* axis varying fastest; keys may be dotted.

  With axes ``{"seed": [0, 1], "task.name": [...], "scheme": [...]}`` every scheme on the first
  task with seed 0 comes first, so a sweep stopped early has already covered a full table. The
  keys of each point are put in reading order: ``first``, then the rest.
  """
  keys = list(axes)
  out = []
  for values in itertools.product(*(list(v) for v in axes.values())):
    point = dict(zip(keys, values))
    out.append({**{k: point[k] for k in first if k in point},
                **{k: v for k, v in point.items() if k not in first}})
  return out


# ----------------------------------------------------------------------------- config fields


def unflatten(flat: Mapping[str, Any]) -> dict:
  """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
  out: dict = {}
  for key, value in flat.items():
    node = out
    *path, last = key.split(".")
    for part in path:
      node = node.setdefault(part, {})
    node[last] = value
  return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (ConfigDicts too)."""
  out = {}
  for key, value in d.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def set_field(config: ml_collections.ConfigDict, key: str, value: Any, *, where: str) -> None:
  """Sets dotted ``key``; a key naming no field, or a value of the wrong type, is a ConfigError."""
  node = config
  *path, last = key.split(".")
  for i, part in enumerate(path):
    parent = ".".join(path[:i]) or "the config"
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(key, f"no such config field ({where}); {parent} is a value, not a block")
    if part not in node:
      raise ConfigError(key, f"no such config field ({where}); "
                        f"{parent} has: {', '.join(sorted(node.keys()))}")
    node = node[part]
  if not isinstance(node, ml_collections.ConfigDict) or last not in node:
    known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
    hint = f"; {'.'.join(path) or 'the config'} has: {known}" if known else ""
    if path and path[0] == "encoding":
      hint += f" (scheme {config.encoding.name!r})"
    raise ConfigError(key, f"no such config field ({where}){hint}")
  if isinstance(node[last], ml_collections.ConfigDict):
    raise ConfigError(key, f"is a block, not a field ({where}); set its fields, e.g. {key}.<field>")
  try:
    node[last] = value
  except TypeError as e:
    raise ConfigError(key, f"bad value {value!r} ({where}): {e}") from None
