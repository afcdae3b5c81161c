"""Position-encoding schemes, found by module path: ``encoding.name`` selects
``posenc/encodings/<name>.py``, whose ``Encoding`` class implements the hooks of
:mod:`posenc.encodings.base`.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import ml_collections

from posenc.encodings.base import Dims, Encoding
from posenc.errors import ConfigError

_NOT_SCHEMES = {"base"}


def names() -> list[str]:
  """All schemes present in this package."""
  import posenc.encodings as pkg
  return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                if not m.name.startswith("_") and m.name not in _NOT_SCHEMES)


def get(name: str) -> type[Encoding]:
  """The ``Encoding`` class of scheme ``name``."""
  known = names()
  if name not in known:
    raise ConfigError("config.encoding.name",
                      f"unknown scheme {name!r}; choose one of: {', '.join(known)}")
  module = importlib.import_module(f"posenc.encodings.{name}")
  return module.Encoding


def default_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """A config block ``{name, <every option of the scheme with its default>}``."""
  cls = get(name)
  fields = {"name": name, **cls.options()}
  for key, value in overrides.items():
    if key not in fields:
      raise ConfigError(f"config.encoding.{key}",
                        f"scheme {name!r} has no such option; known: {', '.join(sorted(fields))}")
    fields[key] = value
  return ml_collections.ConfigDict(fields)


def _freeze(value):
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def check_mode(cls: type[Encoding], name: str, causal: bool) -> None:
  mode = "decoder" if causal else "encoder"
  if mode not in cls.MODES:
    other = "True" if not causal else "False"
    alt = "sinusoidal" if not causal else "rope"
    reason = f" ({cls.MODE_REASON})" if cls.MODE_REASON else ""
    raise ConfigError(
        "config.model.causal",
        f"scheme {name!r} is valid only in {' or '.join('an ' + m if m[0] == 'e' else 'a ' + m for m in cls.MODES)}, "
        f"not {'an' if mode == 'encoder' else 'a'} {mode}{reason}; "
        f"set --config.model.causal={other} or pick a scheme valid here, e.g. {alt}")


def build(enc_cfg: ml_collections.ConfigDict, dims: Dims) -> Encoding:
  """Builds the scheme's (unbound) module from its config block."""
  name = enc_cfg.get("name")
  cls = get(name)
  check_mode(cls, name, dims.causal)
  known = cls.options()
  kwargs = {}
  for key, value in enc_cfg.items():
    if key == "name":
      continue
    if key not in known:
      raise ConfigError(f"config.encoding.{key}",
                        f"scheme {name!r} has no such option; known: {', '.join(sorted(known)) or '(none)'}")
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    kwargs[key] = _freeze(value)
  return cls(dims=dims, **kwargs)
