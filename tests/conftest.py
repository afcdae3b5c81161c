"""Shared test setup: JAX on CPU, quiet logs, repo root importable."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import logging  # noqa: E402

logging.set_verbosity(logging.WARNING)
# Tiny programs: XLA's optimisation passes cost more than they save (~2x faster suite).
jax.config.update("jax_disable_most_optimizations", True)
