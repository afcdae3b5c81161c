"""``attention_train.png`` / ``attention_long.png``: every layer's and head's attention weights.

One sample of the run's task (``PRNGKey(0)``, evaluation positions) at the longest training input
length, and at a longer one (``long_length``, or the longest evaluated length capped at
``DEFAULT_LONG_CAP``), run through the model rebuilt from ``config.json`` with
``capture_attention=True``. Works for every scheme; dashed lines in the long map mark where the
training lengths end.
"""

from __future__ import annotations

import os

import numpy as np

from posenc.inspect import figures
from posenc.inspect.context import Context, jnp_tree

# The long attention map's input length when none is given: eval.max_length, at most this
# (a 500-token map is unreadable), and at least one past the training length.
DEFAULT_LONG_CAP = 128


def plot_attention(ctx: Context) -> list[str]:
  """Every layer's and head's attention for one sample at a training and a longer length."""
  import jax
  from posenc import data, positions as positions_lib
  s = ctx.setup()
  plt = figures.pyplot()
  train_len = s.config.task.train_max_length
  long_len = ctx.long_length or min(s.config.eval.max_length, max(DEFAULT_LONG_CAP, train_len + 1))
  paths = []
  for length, name in ((train_len, "attention_train.png"), (long_len, "attention_long.png")):
    if name == "attention_long.png" and long_len <= train_len:
      print(f"note: skipped {name}: the longest evaluated length ({long_len}) is not beyond "
            f"training ({train_len})")
      continue
    total = data.total_length(s.task, length)
    padded = -(-total // 8) * 8
    model = s.model(s.eval_bound(padded)).clone(capture_attention=True)
    batch_fn = data.make_batch_fn(s.task, positions_lib.make(s.config.positions, train=False),
                                  batch_size=1, lengths=(length,), padded_length=padded,
                                  causal=s.causal)
    batch = batch_fn(jax.random.PRNGKey(0), 0)
    _, state = model.apply({"params": jnp_tree(ctx.params)}, batch["tokens"], batch["positions"],
                           batch["valid"], train=False, mutable=["intermediates"])
    inter = state["intermediates"]
    layers, heads = s.model_cfg.num_layers, s.model_cfg.num_heads
    fig, axes = plt.subplots(layers, heads, figsize=(2.4 * heads, 2.4 * layers + 0.6), squeeze=False)
    for l in range(layers):
      w = np.asarray(inter[f"attention_{l}"][0])[0, :, :total, :total]
      for h in range(heads):
        ax = axes[l][h]
        ax.imshow(w[h], cmap="viridis", vmin=0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"layer {l} head {h}", fontsize=8)
        if length > train_len:
          tl = data.total_length(s.task, train_len)
          ax.axhline(tl - 0.5, color="w", lw=0.6, ls="--")
          ax.axvline(tl - 0.5, color="w", lw=0.6, ls="--")
    figures.suptitle(fig, f"{ctx.get('encoding.name')} on {s.task.name}: attention, input length "
                     f"{length} ({total} tokens; rows: queries, columns: keys)")
    fig.tight_layout()
    paths.append(figures.save(fig, os.path.join(ctx.out, name)))
  return paths
