"""rope: see posenc/encodings/rope.py. Presets as in configs/base.py.

Re-evaluate a trained run at a longer length under a context-extension rule:
  python -m experiments.run --config=configs/rope.py --config.init.from_workdir=<run> \
    --config.train.steps=0 --config.encoding.scaling=yarn --config.eval.max_length=128
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="rope")
  return c
