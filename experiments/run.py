"""One run: train short, test long, write results.

  python -m experiments.run --config=configs/sinusoidal.py
  python -m experiments.run --config=configs/sinusoidal.py:smoke --config.train.steps=50 --workdir=/tmp/r

Bad input (an unknown scheme, task, preset or override key; a length a scheme
cannot represent; a workdir that is a file) ends with one line naming the field
and exit status 2, before any compute.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from posenc.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with a preset: configs/<scheme>.py[:smoke|paper].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (default: runs/<derived from the config>).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.ERROR)  # orbax and JAX are chatty below ERROR
  from posenc import train  # imports JAX; kept after flag parsing so --help is instant

  config = _CONFIG.value
  if _WORKDIR.value:
    with config.unlocked():
      config.workdir = _WORKDIR.value
  try:
    train.train_and_evaluate(config)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  from experiments import cli
  cli.main_with_clear_errors(main)
