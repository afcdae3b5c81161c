"""What every plot gets: the run's saved config and parameters, and the current code's view of it.

A plot function takes a :class:`Context` and returns the path(s) it wrote. It raises
:class:`NotApplicable` when the run is of another scheme family (bias curves for a rotary
scheme), and :class:`Skip` with a one-line reason when it applies but cannot be drawn (the
scheme's module is gone from this checkout, the saved parameters no longer fit it, ...).
"""

from __future__ import annotations

import importlib
import json
from typing import Any, Callable

import numpy as np

from posenc.inspect.report import config_get, first_line

# Plots cap the number of positions they draw (a 2048-position similarity matrix is unreadable).
MAX_POSITIONS = 1024


class Skip(Exception):
  """A plot that cannot be made for this run; the message says why (one line)."""


class NotApplicable(Skip):
  """A plot of another scheme family (e.g. bias curves for a rotary scheme): listed, not noted."""


class Context:
  """What the plots share: the run's config, its saved parameters, the folder for the PNGs, and
  (lazily) the current code's view of the run (``posenc.setup.setup``), or why that is
  unavailable.

  ``config`` is the saved ``config.json`` as a dict (None when missing); ``params`` the saved
  parameter tree as numpy arrays; ``out`` the folder plots are written to; ``long_length`` the
  input length of the long attention map (0: chosen from the config).
  """

  def __init__(self, workdir: str, config: dict | None, params: dict, out: str, long_length: int):
    self.workdir, self.config, self.params, self.out = workdir, config, params, out
    self.long_length = long_length
    self._setup = None
    self._why_not: str | None = None

  def get(self, path: str, default: Any = None) -> Any:
    """A saved config value by dotted path (``"encoding.base"``); ``default`` if absent."""
    return config_get(self.config, path, default)

  @property
  def enc_params(self) -> dict:
    """The saved ``params["encoding"]`` subtree (empty for schemes without parameters)."""
    return self.params.get("encoding", {}) if isinstance(self.params, dict) else {}

  def setup(self):
    """``posenc.setup.setup`` of the saved config, checked against the saved parameters."""
    if self._setup is None and self._why_not is None:
      try:
        self._setup = self._make_setup()
      except Skip as e:
        self._why_not = str(e)
      except Exception as e:  # noqa: BLE001 — any failure means "the current code cannot"
        self._why_not = f"the current code cannot rebuild this run's model ({first_line(e)})"
    if self._why_not is not None:
      raise Skip(self._why_not)
    return self._setup

  def _make_setup(self):
    if self.config is None:
      raise Skip("config.json is missing, so the model cannot be rebuilt")
    try:
      import jax
      import jax.numpy as jnp
      import ml_collections
      from posenc import encodings, setup as setup_lib
      from posenc.errors import ConfigError
    except ImportError as e:
      raise Skip(f"posenc is not importable here ({e})") from None
    name = self.get("encoding.name")
    if name not in encodings.names():
      raise Skip(f"scheme {name!r} is not in this checkout (no posenc/encodings/{name}.py)")
    cfg = json.loads(json.dumps(self.config))
    cfg.setdefault("init", {})["from_workdir"] = ""  # that run need not exist any more
    try:
      s = setup_lib.setup(ml_collections.ConfigDict(cfg))
    except (ConfigError, KeyError, AttributeError, TypeError, ValueError) as e:
      raise Skip(f"the current code refuses this run's config.json ({first_line(e)})") from None
    model = s.model(s.train_bound())
    length = s.train_padded
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32), jnp.zeros((1, length), jnp.int32),
        jnp.ones((1, length), bool), train=False))["params"]
    want, have = _shapes(shapes), _shapes(self.params)
    if want != have:
      diff = sorted(set(want) ^ set(have)) or [k for k in sorted(want) if want[k] != have[k]]
      k = diff[0]
      raise Skip(f"the saved parameters do not fit the current code's model ({k}: "
                 f"{have.get(k, 'absent')} saved, {want.get(k, 'absent')} now)")
    return s

  def scheme_module(self):
    """The scheme's Python module, ``posenc.encodings.<encoding.name>`` (its math functions)."""
    return importlib.import_module(f"posenc.encodings.{self.get('encoding.name')}")

  def eval_positions(self) -> int:
    """Positions the run's longest evaluation program used (capped at MAX_POSITIONS)."""
    s = self.setup()
    return min(s.eval_bound(s.eval_buckets[-1][1]), MAX_POSITIONS)

  def train_positions(self) -> int:
    """Positions of the longest training sequence (input plus answer)."""
    from posenc import data
    s = self.setup()
    return data.total_length(s.task, s.config.task.train_max_length)

  def encoding_at(self, max_position: int):
    """The scheme's module (unbound) for a program whose positions are below ``max_position``."""
    return self.setup().model(max_position).encoding

  def apply_encoding(self, enc, fn: Callable, *args):
    """``fn(module, *args)`` with the module bound to the saved encoding parameters."""
    return enc.apply({"params": jnp_tree(self.enc_params)}, *args, method=fn)


def _shapes(tree, prefix: str = "") -> dict[str, tuple]:
  """``{path: shape}`` of a nested mapping of arrays (or ShapeDtypeStructs, FrozenDicts)."""
  if hasattr(tree, "items"):
    out = {}
    for k, v in tree.items():
      out.update(_shapes(v, f"{prefix}{k}/"))
    return out
  return {prefix[:-1]: tuple(np.shape(tree))}


def jnp_tree(tree):
  """A nested dict of numpy arrays as jax arrays (what ``Module.apply`` takes)."""
  import jax.numpy as jnp
  if isinstance(tree, dict):
    return {k: jnp_tree(v) for k, v in tree.items()}
  return jnp.asarray(tree)
