"""Shared test setup: JAX on CPU, quiet logs, repo root importable, one compilation cache.

Many tests compile the same small programs (the smoke preset's training step and evaluation of a
scheme, in several test files and in the subprocesses some tests start). All of them, in every
pytest-xdist worker and subprocess, share one persistent JAX compilation cache made for this
test session, so each distinct program is compiled once per session. The cache starts empty on
every session (no result can depend on an earlier checkout's programs); the process that made it
removes it at exit. ``POSENC_TEST_JAX_CACHE=off`` turns it off, ``=DIR`` uses (and keeps) DIR.
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tiny programs: XLA's optimisation passes cost more than they save (~2x faster suite). Set in
# the environment too, so the runs tests start as subprocesses compile the same way.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import logging  # noqa: E402

logging.set_verbosity(logging.WARNING)
jax.config.update("jax_disable_most_optimizations", True)

_cache = os.environ.get("POSENC_TEST_JAX_CACHE")
if _cache is None:  # the first process of the session (pytest's controller): make the cache
  _cache = os.environ["POSENC_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="posenc-test-jax-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
if _cache != "off":
  # Workers and subprocesses inherit the environment: the same folder, JAX's own settings.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  jax.config.update("jax_compilation_cache_dir", _cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
