"""Length-extrapolation tasks, found by name: ``posenc.tasks.get("reverse_string")``."""

from __future__ import annotations

from posenc.errors import ConfigError
from posenc.tasks import context_sensitive, deterministic_context_free, regular
from posenc.tasks.base import Task

_MODULES = (regular, deterministic_context_free, context_sensitive)


def registry() -> dict[str, type[Task]]:
  out = {}
  for module in _MODULES:
    for cls in getattr(module, "TASKS", ()):
      out[cls.name] = cls
  return out


def names() -> list[str]:
  return sorted(registry())


def get(name: str) -> Task:
  """Returns the task called ``name``; a clear error lists the known ones."""
  reg = registry()
  if name not in reg:
    raise ConfigError("config.task.name",
                      f"unknown task {name!r}; choose one of: {', '.join(sorted(reg))}")
  return reg[name]()
