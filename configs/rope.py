"""rope: see posenc/encodings/rope.py. Presets as in configs/base.py.

Re-evaluate a trained run at a longer length under a context-extension rule. Hugging Face's
names (linear, ntk, yarn, llama3, longrope) are HF's static rules: one factor s, set by
--config.encoding.factor, at every length. Trained on inputs up to 16 (32 tokens with the
answer) and evaluated up to 128 (256 tokens), s = 8:
  python -m experiments.run --config=configs/rope.py --config.init.from_workdir=<run> \
    --config.train.steps=0 --config.encoding.scaling=yarn --config.encoding.factor=8 \
    --config.eval.max_length=128
--config.encoding.scaling=yarn_per_sequence instead rescales only sequences longer than the
training length, each by its own length (s = L'/32 when factor is 0; not HF's rule).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="rope")
  return c
