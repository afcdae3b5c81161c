"""rope on byte-level language modelling; presets and fields in configs/lm/base.py.

  python -m experiments.run --config=configs/lm/rope.py --workdir=/tmp/lm-rope
"""

from configs.lm import base


def get_config(arg=None):
  return base.get_config(arg, scheme="rope")
