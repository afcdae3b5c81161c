"""Errors a user can fix by changing the config or the command line, and the failures of a
run's compiled programs (a diverged loss, a scheme's solver giving up), each said in one line."""

from __future__ import annotations

import re


class ConfigError(ValueError):
  """A bad config value, found before any compute is spent.

  The message always names the offending field (e.g. ``config.encoding.name``)
  and says how to fix it, so the command line can print it as one line.
  """

  def __init__(self, field: str, message: str):
    self.field = field
    super().__init__(f"{field}: {message}")


class TrainingDiverged(RuntimeError):
  """Loss or gradients became NaN/Inf, or a compiled step failed at run time (e.g. a scheme's
  solver gave up); the last good checkpoint is kept."""


# Exceptions raised from inside a compiled program: XLA runtime errors (``jax.errors.JaxRuntimeError``;
# a failing ``eqx.error_if`` under jit arrives as one, or as a ValueError "INTERNAL: CpuCallback
# error ... EquinoxRuntimeError: <message>" when raised at dispatch) and equinox's own error types
# (raised when the check runs outside jit, e.g. in ``model.init``). Matched by name and text so
# that equinox stays optional here.
_RUNTIME_ERROR_NAMES = {"JaxRuntimeError", "XlaRuntimeError", "EquinoxRuntimeError",
                        "EqxRuntimeError", "_EquinoxRuntimeError", "EquinoxTracetimeError",
                        "SchemeRuntimeError"}


class SchemeRuntimeError(RuntimeError):
  """A scheme's computation failed at run time, as its ``diagnostics`` reported (e.g. FLOATER's
  solver ran out of steps); the message names the config field that fixes it."""


def runtime_error_message(e: BaseException) -> str | None:
  """One line saying why a compiled program failed, or None if ``e`` is not such a failure.

  The scheme's own message (e.g. "FLOATER ODE solver: ... raise config.encoding.max_steps") is
  the last ``SomeError: text`` line of the (often very long) XLA/equinox error text.
  """
  text = str(e)
  if not ({c.__name__ for c in type(e).__mro__} & _RUNTIME_ERROR_NAMES
          or "EquinoxRuntimeError" in text or re.search(r"\bCallback error\b", text)):
    return None
  found = re.findall(r"^\s*[\w.]*(?:Error|Exception): (\S.*)$", text, re.M)
  line = found[-1] if found else next((l for l in text.splitlines() if l.strip()), type(e).__name__)
  return " ".join(line.split())[:500].rstrip(" .;")

