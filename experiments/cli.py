"""Turns flag-parsing failures (bad config file, preset or override) into one clear line."""

from __future__ import annotations

import glob
import os
import re
import sys

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


def main_with_clear_errors(main) -> None:
  """``app.run(main)``, but a bad ``--config`` or ``--config.x.y`` prints one line and exits 2."""
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
    key = _one_line(e).split()[0].strip("'\"")
    bad = [a.split("=")[0] for a in sys.argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    where = bad[0] if bad else "--config"
    hint = _one_line(e)[len(key) + 2:].strip()
    print(f"error: {where}: no such config field{'; ' + hint if hint else ''}", file=sys.stderr)
    sys.exit(2)
  except (ValueError, TypeError, ImportError) as e:
    print(f"error: --config: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  app.run(main, argv=argv)
