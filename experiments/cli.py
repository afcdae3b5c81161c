"""Command lines of ``experiments.run`` and ``experiments.sweep``: ``--help``, and flag-parsing
failures (bad config file, preset or override) as one clear line.

``--help`` (``-h``, ``--helpshort``) prints the program's docstring, its own flags, and how to
set and list the ``config.*`` fields (``--show_config``); ``--helpfull`` adds absl's own flags.
Both exit 0 without loading a config or importing JAX.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import textwrap

from absl import app, flags


def _one_line(exc: BaseException) -> str:
  if isinstance(exc, KeyError) and exc.args:
    text = " ".join(str(exc.args[0]).strip().strip("'\"").split())
  else:
    text = " ".join(str(exc).split())
  if "Traceback" in text:  # a config file's own exception: keep its message only
    prefix = text.split(":", 1)[0] if text.startswith("flag ") else ""
    text = re.split(r"\b\w+Error: ", text)[-1]
    text = f"{prefix.replace('flag ', '')}: {text}" if prefix else text
  while re.match(r"^\w+Error: ", text):
    text = re.sub(r"^\w+Error: ", "", text)
  return text.replace("\\n", " ").replace("'\\'", "'").replace("\\'", "'") or type(exc).__name__


_HELP = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")
_HELPFULL = ("--helpfull", "-helpfull")


def _flag_line(flag) -> str:
  name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
  if flag.default is not None and flag.default != "" and not (flag.boolean and not flag.default):
    text = f"{flag.help} (default: {flag.default_as_str or flag.default})"
  else:
    text = flag.help
  return "\n".join(textwrap.wrap(f"{name}: {text}", width=96, initial_indent="  ",
                                 subsequent_indent="      "))


def own_flags(main) -> list:
  """The flags the program of ``main`` defines (absl files them under its path or module)."""
  by_module = flags.FLAGS.flags_by_module_dict()
  module = sys.modules.get(main.__module__)
  for name in (sys.argv[0] if sys.argv else None, getattr(module, "__file__", None),
               main.__module__):
    if name and by_module.get(name):
      return sorted(by_module[name], key=lambda f: f.name)
  return []


def help_text(main, prog: str, example_config: str, full: bool = False) -> str:
  """What ``--help`` prints: the program's docstring, its flags, how to list the config fields."""
  module = sys.modules.get(main.__module__)
  doc = (getattr(module, "__doc__", None) or "").strip()
  lines = [f"usage: python -m {prog} --config=FILE[:PRESET] [--flag=value ...] "
           "[--config.<field>=<value> ...]", ""]
  if doc:
    lines += [doc, ""]
  lines.append("flags:")
  lines += [_flag_line(f) for f in own_flags(main)]
  lines += [
      "  --help, -h: print this and exit; --helpfull: also absl's own flags", "",
      "config fields:",
      "  --config.<field>=<value> sets any field of the config file, e.g. --config.train.steps=100;",
      "  an unknown field or a bad value is an error naming the field. Every field, with its value",
      "  for a config file and preset and what it means:",
      f"    python -m {prog} --config={example_config} --show_config",
  ]
  if full:
    lines += ["", "absl flags:", flags.FLAGS.module_help("absl.logging").split("\n", 1)[-1]]
  return "\n".join(lines)


def _config_file_error(argv: list[str]) -> str | None:
  for arg in argv[1:]:
    m = re.match(r"^--config=(.*)$", arg)
    if m:
      path = m.group(1).split(":", 1)[0]
      if not os.path.isfile(path):
        known = sorted(glob.glob("configs/*.py"))
        known = [k for k in known if not k.endswith(("__init__.py", "base.py"))]
        hint = f"; available: {', '.join(known)}" if known else ""
        return f"--config: no config file {path!r}{hint}"
  return None


def _no_such_field(e: BaseException, argv: list[str]) -> str:
  """The line for an override naming no config field, e.g. ``--config.train.stpes=5``.

  ml_collections raises ``KeyError("'stpes'\\nDid you mean \\"steps\\" instead of \\"stpes\\"?")``,
  wrapped in an AttributeError below the top level, or a KeyError ending in ``Attempting to
  lookup: train.steps.x`` for a path through a value that is not a block.
  """
  while isinstance(e, AttributeError) and e.args and isinstance(e.args[0], BaseException):
    e = e.args[0]
  raw = str(e.args[0]) if e.args else str(e)
  overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  lookup = re.search(r"Attempting to lookup: (\S+)", raw)
  if lookup:  # a field below a value: --config.train.steps.x
    path = lookup.group(1).rstrip(".")
    where = next((a for a in overrides if a == f"--config.{path}"), f"--config.{path}")
    kind = re.search(r"<class '(\w+)'>", raw)
    parent = path.rsplit(".", 1)[0]
    what = f" ({parent} is a value of type {kind.group(1)}, not a block of fields)" if kind else ""
    return f"{where}: no such config field{what}"
  m = re.match(r"""^\s*['"]?([^'"\n]*)['"]?\s*(?:\n(.*))?$""", raw, re.S)
  key, rest = (m.group(1), m.group(2) or "") if m else (raw.split()[0].strip("'\""), "")
  where, parts = "--config", []
  for arg in overrides:
    parts = arg[len("--config."):].split(".")
    if key in parts:
      where = arg
      break
  hint = ""
  guess = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"\?', rest)
  if guess and key in parts:
    fixed = parts[:]
    fixed[parts.index(key)] = guess.group(1)
    hint = f"; did you mean --config.{'.'.join(fixed)}?"
  elif guess:
    hint = f"; did you mean {guess.group(1)!r}?"
  elif " ".join(rest.split()):
    hint = "; " + " ".join(rest.split())
  tail = "" if where != "--config" else f" {key!r}"
  return f"{where}: no such config field{tail}{hint}"


def main_with_clear_errors(main, prog: str | None = None,
                           example_config: str = "configs/rope.py:smoke") -> None:
  """``app.run(main)``, but a bad ``--config`` or ``--config.x.y`` prints one line and exits 2,
  and ``--help`` prints :func:`help_text` (``prog``: ``experiments.run``, by default the module
  of ``main``) and exits 0."""
  args = sys.argv[1:]
  if any(a in _HELP or a in _HELPFULL for a in args):
    name = prog or (main.__module__ if main.__module__ != "__main__" else
                    os.path.splitext(os.path.relpath(sys.argv[0]))[0].replace(os.sep, "."))
    print(help_text(main, name, example_config, full=any(a in _HELPFULL for a in args)))
    sys.exit(0)
  problem = _config_file_error(sys.argv)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    sys.exit(2)
  try:
    argv = flags.FLAGS(sys.argv)
  except flags.Error as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except (KeyError, AttributeError) as e:
    print(f"error: {_no_such_field(e, sys.argv)}", file=sys.stderr)
    sys.exit(2)
  except (ValueError, TypeError, ImportError) as e:
    print(f"error: --config: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)
