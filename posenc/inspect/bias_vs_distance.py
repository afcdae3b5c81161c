"""``bias_vs_distance.png``: each head's additive attention-logit term against ``i − j``.

For schemes with a ``logits`` hook (ALiBi, KERPLE, Sandwich, FIRE, T5, ...). The hook is called
with q = k = 0, so a content-dependent term (Shaw, DeBERTa, ...) shows only its position part.
One panel per layer whose curves differ from layer 0's (one panel when the term is shared).
"""

from __future__ import annotations

import os

import numpy as np

from posenc.inspect import figures
from posenc.inspect.context import Context, NotApplicable

# The widest distance drawn (a causal run: 0..MAX_BIAS_DISTANCE-1; an encoder: both signs).
MAX_BIAS_DISTANCE = 512


def plot_bias_vs_distance(ctx: Context) -> str:
  """Each head's ``logits`` term against ``i − j`` (q = k = 0), one panel per distinct layer."""
  import jax.numpy as jnp
  s = ctx.setup()
  cls = type(ctx.encoding_at(1))
  if not callable(getattr(cls, "logits", None)):
    raise NotApplicable("the scheme has no logits hook (no additive attention bias)")
  plt = figures.pyplot()
  # The full [size, size] term is computed (hooks are written for Lq = Lk) and one query row kept.
  n = min(ctx.eval_positions(), MAX_BIAS_DISTANCE)
  causal = s.causal
  size = n if causal else 2 * n - 1
  query = n - 1  # the last query (decoder) or the middle one (encoder)
  enc = ctx.encoding_at(size)
  heads, dh = s.model_cfg.num_heads, s.model_cfg.d_model // s.model_cfg.num_heads
  pos = jnp.arange(size, dtype=jnp.int32)[None]
  zeros = jnp.zeros((1, size, heads, dh), jnp.float32)
  per_layer = []
  for layer in range(s.model_cfg.num_layers):
    out = ctx.apply_encoding(enc, lambda m, q, k, p: m.logits(q, k, p, p, layer), zeros, zeros, pos)
    per_layer.append(np.broadcast_to(np.asarray(out, np.float64), (1, heads, size, size))[0, :, query])
  distinct = [0] + [l for l in range(1, len(per_layer))
                    if not np.allclose(per_layer[l], per_layer[0])]
  distance = query - np.arange(size)  # i − j
  keep = distance >= 0 if causal else np.ones(size, bool)
  fig, axes = plt.subplots(1, len(distinct), figsize=(6 * len(distinct), 4), squeeze=False)
  train_len = ctx.train_positions()
  for ax, layer in zip(axes[0], distinct):
    for h in range(heads):
      ax.plot(distance[keep], per_layer[layer][h][keep], lw=1, label=f"head {h}")
    for x in (train_len - 1, -(train_len - 1)) if not causal else (train_len - 1,):
      ax.axvline(x, color="k", ls="--", lw=0.8)
    shared = " (all layers)" if len(distinct) == 1 else f" (layer {layer})"
    ax.set_title(f"bias vs distance{shared}", fontsize=9)
    ax.set_xlabel("i − j (query minus key position)")
    ax.set_ylabel("additive logit term")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7, ncol=2)
  figures.suptitle(fig, f"{ctx.get('encoding.name')}: each head's logit term (q = k = 0; dashed: "
                   "longest training distance)")
  fig.tight_layout()
  return figures.save(fig, os.path.join(ctx.out, "bias_vs_distance.png"))
