"""Sweep files: ``get_config(arg)`` (the base config, with presets) and ``get_sweep(config)`` (the points).

A sweep file is data the experiments layer reads: it imports from ``configs`` (this package's
:func:`sweep_config`), ``posenc`` (:mod:`posenc.sweeps`: discovered schemes and tasks, filters,
the grid) and ``ml_collections``, never from ``experiments``. It defines:

* ``get_config(arg=None)`` -> the sweep's base config, built with :func:`sweep_config`: a
  complete run config (``configs/<scheme>.py`` at the preset ``arg``, then the sweep's
  *shared* settings), whose ``workdir`` is the sweep's root folder, plus a ``sweep`` block
  (``name``, ``seeds``, the ``schemes`` / ``tasks`` / ``learning_rates`` filters and axes as
  comma-separated strings, ``configs``, ``shared``). Presets are ``configs/base.py``'s:
  ``smoke`` (tests), default (a 2-core CPU), ``paper``.
* ``get_sweep(config)`` -> the points: a list of flat override dicts, in a deterministic order,
  read from ``config`` (so ``--config.sweep.seeds=3`` or ``--config.sweep.schemes=rope`` change
  them). ``"scheme": S`` swaps the whole encoding (``configs/S.py``); other keys are dotted
  config fields (``task.name``, ``seed``, ``train.learning_rate``, ``positions.kind``, ...).

A new sweep, every encoder scheme × the regular-language tasks × 3 seeds at 500 steps::

  from configs.sweeps import sweep_config
  from posenc import sweeps

  def get_config(arg=None):
    return sweep_config(arg, name="regular", shared={"model.causal": False,
                                                     "train.steps": 500}, seeds=3)

  def get_sweep(config):
    return sweeps.grid({"seed": range(config.sweep.seeds),
                        "task.name": sweeps.tasks_of_levels(config, ("R",), "a regular task"),
                        "scheme": sweeps.schemes_for("encoder", config)})

How a point becomes a run config (the ``"scheme"`` key, precedence of command-line overrides,
workdir names) is documented in :mod:`experiments.sweeping`. Run one with::

  python -m experiments.sweep --config=configs/sweeps/chomsky.py:smoke --root=/tmp/sweep
  python -m experiments.sweep --config=configs/sweeps/chomsky.py --count
  python -m experiments.run --config=configs/sweeps/chomsky.py:paper --sweep_index=17
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Mapping

import ml_collections

from posenc import encodings
from posenc.sweeps import set_field, unflatten


def scheme_config(scheme: str, preset: str, package: str = "configs") -> ml_collections.ConfigDict:
  """``<package>/<scheme>.py:<preset>`` (e.g. ``configs/rope.py``, ``configs/lm/rope.py``).

  A scheme without its own file there gets ``<package>/base.py``'s
  ``get_config(preset, scheme=scheme)``, so new schemes join sweeps before their config file.
  """
  encodings.get(scheme)  # an unknown scheme: a clear error listing the known ones
  try:
    module = importlib.import_module(f"{package}.{scheme}")
  except ModuleNotFoundError as e:
    if e.name != f"{package}.{scheme}":
      raise
    base = importlib.import_module(f"{package}.base")
    return base.get_config(preset, scheme=scheme)
  return module.get_config(preset)


def sweep_config(arg: str | None, *, name: str, shared: Mapping[str, Any],
                 scheme: str = "sinusoidal", seeds: int = 1, schemes: str = "",
                 tasks: str = "", learning_rates: str = "",
                 configs: str = "configs") -> ml_collections.ConfigDict:
  """A sweep's base config: ``configs/<scheme>.py:<arg>`` + ``shared`` + a ``sweep`` block.

  Args:
    arg: the preset (``None``: default).
    name: the sweep's name; the default root is ``runs/sweeps/<name>-<preset>``.
    shared: flat overrides applied to every point (again after a scheme swap).
    scheme: the scheme of the base config (points normally set their own).
    seeds: seeds ``0..seeds-1`` per point; ``--config.sweep.seeds=N`` changes it.
    schemes, tasks: comma-separated filters ("" = all that apply), overridable likewise.
    learning_rates: comma-separated values for a learning-rate axis ("" = no axis: the
      config's own ``train.learning_rate``).
    configs: the package of the per-scheme config files a ``scheme`` point loads
      (``configs``; ``configs.lm`` for language modelling).
  """
  from configs import base
  preset = arg or "default"
  if preset not in base.PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(base.PRESETS)} "
                     f"(e.g. --config=configs/sweeps/{name}.py:smoke)")
  c = scheme_config(scheme, preset, configs)
  for key, value in shared.items():
    set_field(c, key, value, where=f"sweep {name!r} shared settings")
  c.workdir = os.path.join("runs", "sweeps", f"{name}-{preset}")
  c.sweep = ml_collections.ConfigDict({
      "name": name, "seeds": seeds, "schemes": schemes, "tasks": tasks,
      "learning_rates": learning_rates, "configs": configs,
      "shared": unflatten(dict(shared))})
  return c
