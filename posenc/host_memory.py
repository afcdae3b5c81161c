"""Host memory for XLA:CPU programs: reuse a program's temporary buffer instead of remapping it.

XLA:CPU runs a compiled program with one temporary buffer holding its intermediates
(``compiled.memory_analysis().temp_size_in_bytes``: 423 MiB for the paper preset's training
step), allocated with ``malloc`` for every call and freed after it. With JAX's default
asynchronous CPU dispatch the call runs on a worker thread, whose glibc arena serves anything
over 64 MiB with a fresh ``mmap`` and gives it back with ``munmap``; so every step the kernel
maps and zeroes the whole buffer again, one 4 KiB page fault at a time. On this project's
2-core CPU that was 108,000 page faults and 0.22–0.26 s of system time per paper step.

:func:`configure` tells glibc's main arena never to ``mmap`` (``M_MMAP_MAX = 0``) and not to
give freed memory back (``M_TRIM_THRESHOLD``), and, for a run whose training step needs more
than glibc's per-thread limit (:func:`step_bytes`, over 32 MiB), runs programs on the calling
thread (``jax_cpu_enable_async_dispatch = False``; programs over several devices still dispatch
asynchronously), whose arena is the main one. A step then reuses the pages the previous step
touched: no page faults, the same results (only where buffers live changes). Measured on the
2-core CPU: the paper preset's step 0.7x, the LM preset's 0.8x, compiling unchanged. Small
steps keep asynchronous dispatch: the default preset's whole run was 10% slower without it.
(Sending every thread to the main arena instead, ``M_ARENA_MAX = 1``, gives the same steps
but makes XLA's compiler threads contend for one lock: compiling took 1.5x longer.) What it
costs: the process keeps its peak heap until it exits, which a training process reaches
every step anyway.

Entry points (``experiments.run``, ``experiments.sweep``, ``scripts/benchmark.py``) call it
before JAX starts its CPU client, which reads the dispatch setting. It does nothing:

* with ``POSENC_MALLOC=system`` in the environment (the opt-out; ``POSENC_MALLOC=sync`` runs
  programs on the calling thread whatever their size);
* where the C library is not glibc (macOS, musl) or has no ``mallopt``;
* when the environment tunes glibc's allocator itself (``GLIBC_TUNABLES``, ``MALLOC_*``);
* once JAX's backends are running (too late for the dispatch setting; the state says so).
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_ENV = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
              "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

# What configure() did: None until it runs, then "kept; ..." or why it did nothing.
STATE: str | None = None


def _backends_started() -> bool:
  from jax._src import xla_bridge  # noqa: PLC0415
  return bool(xla_bridge.backends_are_initialized())


# Above this, glibc serves a worker thread's request with mmap on every call (its largest
# dynamic mmap threshold; per-thread arenas hold at most 64 MiB).
THRESHOLD_BYTES = 32 * 2 ** 20


def step_bytes(config) -> int:
  """A rough size of the training step's temporary buffer from the config alone (no JAX
  backend): float32 activations kept for the backward pass, per layer about ten of width
  ``d_model``, two of width ``d_ff`` and three attention maps per head, for every token of a
  batch padded to the longest training length (and every seed). Within 1.5x of XLA's own
  ``temp_size_in_bytes`` on the default, paper and LM presets."""
  from posenc import data, tasks  # noqa: PLC0415
  task = tasks.get(config.task.name, config)
  lengths = range(config.task.train_min_length, config.task.train_max_length + 1)
  padded = data.buckets(task, lengths, 1)[0][1]  # the one program's length, as setup pads it
  m = config.model
  tokens = config.train.batch_size * max(1, int(config.get("num_seeds", 1))) * padded
  per_token = 10 * m.d_model + 2 * m.d_ff + 3 * m.num_heads * padded
  return 4 * tokens * per_token * m.num_layers


def step_bytes_or_zero(config) -> int:
  """:func:`step_bytes`, or 0 for a config it cannot read (setup reports what is wrong)."""
  try:
    return step_bytes(config)
  except Exception:  # noqa: BLE001 — validation is setup's job, with a clear error
    return 0


def configure(step_bytes_hint: int = 0) -> str:
  """Applies the settings above once per process; ``step_bytes_hint``: the largest
  :func:`step_bytes` the process will run (0: small). Returns what it did, or why not."""
  global STATE
  if STATE is not None:
    return STATE
  if os.environ.get("POSENC_MALLOC", "") == "system":
    STATE = "off: POSENC_MALLOC=system"
  elif any(name in os.environ for name in _GLIBC_ENV):
    STATE = "off: the environment tunes glibc's malloc"
  elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    STATE = "off: not glibc"
  elif _backends_started():
    STATE = "off: JAX's backends had started (call configure() before the first JAX computation)"
  else:
    try:
      mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
      STATE = "off: no mallopt"
    else:
      mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
      if mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1:
        if step_bytes_hint > THRESHOLD_BYTES or os.environ.get("POSENC_MALLOC") == "sync":
          import jax  # noqa: PLC0415
          jax.config.update("jax_cpu_enable_async_dispatch", False)
          STATE = "kept; programs run on the calling thread"
        else:
          STATE = "kept; dispatch asynchronous (small steps)"
      else:
        STATE = "off: mallopt refused"
  return STATE
