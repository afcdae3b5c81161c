"""A minimal hand-written Flax encoder doing the paper preset's training step, timed beside
posenc's own step at the same shape (issue 24: where does posenc's extra time go?).

The minimal model: token embedding times sqrt(d) plus sinusoidal positions, 5 post-LN layers
(d = 64, 8 heads, FFN 256, ReLU), residual dropout 0.1 on the embeddings and each sub-layer's
output (flax's own ``nn.Dropout``), softmax attention with a key-padding mask, a linear head,
masked cross-entropy, Adam with clipping at 1: the work posenc's paper step does, without its
hooks, buckets, rng tree or in-step sampling (its batch is fixed; posenc samples its own on the
device). Both run in one process, in interleaved rounds, at the longest length (80 tokens)::

    python scripts/minimal_step.py [--preset=paper --rounds=5 --steps=3]

Like ``scripts/benchmark.py`` it calls ``posenc.host_memory.configure`` first, so both steps
reuse their memory (``POSENC_MALLOC=system`` times glibc's defaults).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posenc import host_memory  # noqa: E402

import configs.sinusoidal as sinusoidal_config  # noqa: E402


def make_encoder(vocab: int, out_vocab: int, d=64, heads=8, layers=5, d_ff=256, rate=0.1):
  """The minimal model (imports flax here, so that JAX starts after host_memory.configure)."""
  import flax.linen as nn  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  class Minimal(nn.Module):
    @nn.compact
    def __call__(self, tokens, valid, train: bool):
      n = tokens.shape[1]
      pos = jnp.arange(n)[:, None] / (10000 ** (jnp.arange(0, d, 2) / d))[None]
      pe = jnp.zeros((n, d)).at[:, 0::2].set(jnp.sin(pos)).at[:, 1::2].set(jnp.cos(pos))
      x = nn.Embed(vocab, d)(tokens) * math.sqrt(d) + pe
      x = nn.Dropout(rate, deterministic=not train)(x)
      mask = valid[:, None, None, :]
      for _ in range(layers):
        h = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=d,
                                            deterministic=True)(x, mask=mask)
        x = nn.LayerNorm()(x + nn.Dropout(rate, deterministic=not train)(h))
        h = nn.Dense(d)(nn.relu(nn.Dense(d_ff)(x)))
        x = nn.LayerNorm()(x + nn.Dropout(rate, deterministic=not train)(h))
      return nn.Dense(out_vocab)(x)

  return Minimal()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--preset", default="paper", help="preset of configs/sinusoidal.py (model sizes, "
                 "batch, lengths)")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3)
  args = p.parse_args()
  config = sinusoidal_config.get_config(args.preset)
  with config.unlocked():
    config.train.num_buckets = 1
  memory = host_memory.configure(host_memory.step_bytes(config))

  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import optax  # noqa: PLC0415

  from posenc import data, seeds, setup as setup_lib, train  # noqa: PLC0415

  s = setup_lib.setup(config)
  keys = seeds.root_keys(0)
  state = train.init_state(s, keys["init"])
  posenc_step = jax.jit(train.make_train_step(s), donate_argnums=0).lower(
      state, keys["train"]).compile()

  n, bsz = s.train_padded, config.train.batch_size
  vocab, out_vocab = data.vocab_size(s.task), s.task.output_vocab_size
  m = config.model
  model = make_encoder(vocab, out_vocab, d=m.d_model, heads=m.num_heads, layers=m.num_layers,
                       d_ff=m.d_ff, rate=m.dropout)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  tokens = jax.random.randint(k1, (bsz, n), 0, vocab)
  targets = jax.random.randint(k2, (bsz, n), 0, out_vocab)
  valid = jnp.ones((bsz, n), bool)
  params = model.init(k3, tokens, valid, False)["params"]
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(config.train.learning_rate))

  def minimal(st, key):
    def loss_fn(p):
      logits = model.apply({"params": p}, tokens, valid, True, rngs={"dropout": key})
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
      return jnp.sum(ce * valid) / jnp.sum(valid)
    loss, grads = jax.value_and_grad(loss_fn)(st["params"])
    updates, opt_state = opt.update(grads, st["opt_state"], st["params"])
    return {"params": optax.apply_updates(st["params"], updates), "opt_state": opt_state}, loss

  mstate = {"params": params, "opt_state": opt.init(params)}
  minimal_step = jax.jit(minimal, donate_argnums=0).lower(mstate, keys["train"]).compile()
  runs = {"posenc": [posenc_step, state], "minimal": [minimal_step, mstate]}
  key = keys["train"]
  times = {name: [] for name in runs}
  for r in range(args.rounds):
    for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
      fn, st = runs[name]
      if r == 0:
        st, _ = fn(st, key)
      jax.block_until_ready(st)
      t = time.perf_counter()
      for _ in range(args.steps):
        st, _ = fn(st, key)
      jax.block_until_ready(st)
      times[name].append((time.perf_counter() - t) / args.steps)
      runs[name][1] = st
  ms = {name: 1e3 * statistics.median(v) for name, v in times.items()}
  print(f"{args.preset} preset step at {n} tokens, batch {bsz}, median of {args.rounds} interleaved "
        f"rounds (host memory: {memory}):")
  print(f"  posenc  {ms['posenc']:.1f} ms\n  minimal {ms['minimal']:.1f} ms\n"
        f"  posenc / minimal = {ms['posenc'] / ms['minimal']:.2f}")


if __name__ == "__main__":
  main()
