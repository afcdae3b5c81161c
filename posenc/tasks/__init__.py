"""Length-extrapolation tasks, found by name: ``posenc.tasks.get("reverse_string")``."""

from __future__ import annotations

from posenc.errors import ConfigError
from typing import Any

from posenc.tasks import context_sensitive, decoder_tasks, deterministic_context_free, lm, regular
from posenc.tasks.base import Task

_MODULES = (regular, deterministic_context_free, context_sensitive, decoder_tasks, lm)


def registry() -> dict[str, type[Task]]:
  out = {}
  for module in _MODULES:
    for cls in getattr(module, "TASKS", ()):
      out[cls.name] = cls
  return out


def names() -> list[str]:
  return sorted(registry())


def get(name: str, config: Any = None) -> Task:
  """Returns the task called ``name``; a clear error lists the known ones.

  With a run ``config`` (``posenc.setup.setup`` passes it), a task class with a
  ``from_config(config)`` classmethod (language modelling: its corpus, evaluation lengths,
  and a refusal of encoders) is built from it, raising ConfigError naming the field;
  other tasks take no settings.
  """
  reg = registry()
  if name not in reg:
    raise ConfigError("config.task.name",
                      f"unknown task {name!r}; choose one of: {', '.join(sorted(reg))}")
  cls = reg[name]
  if config is not None and hasattr(cls, "from_config"):
    return cls.from_config(config)
  return cls()
