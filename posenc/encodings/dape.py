"""DAPE (Zheng et al., NeurIPS 2024, "DAPE: Data-Adaptive Positional Encoding for Length
Extrapolation"): a small MLP reads each pair's content logits next to a bias scheme's bias.

For every query ``i`` and key ``j``, with ``x_ij ∈ R^H`` the content logits of the ``H`` heads
(``q·k / sqrt(d_h)``, the model's scaled scores) and ``b_ij ∈ R^H`` the bias of the chosen
scheme (ALiBi, KERPLE or FIRE), the logits become

  ``x_ij + b_ij + f([x_ij; b_ij])``,   ``f = Linear(2H → W) ∘ LeakyReLU ∘ Linear(W → H)``,

one ``f`` per layer, applied to every pair independently (it mixes the heads of one pair,
never two pairs), then the masked softmax as usual. :func:`adaptive_term` is the part
added to the content logits, ``b + f([x; b])``.

As in the official code (``chuanyang-Zheng/DAPE``, ``DAPE.py``: ``AliBi_DAPE``,
``ParallelKerpleLog_DAPE``, ``FIRE_DAPE``, each ``forward(x)`` returning
``x + bias + mlp2(cat(x, bias))`` with ``cat`` over the head axis, logits first, and
``mlp2 = Sequential(Linear(2H, mlp_width), LeakyReLU(), Linear(mlp_width, H))``; ``x`` is
GPT-NeoX's ``attention_scores``, already scaled by ``1/sqrt(d_h)``, before the causal mask;
``mlp_width = 32`` in ``configs/125M/512/*_c.yml``; each attention layer builds its own
module, so the MLP is per layer). The MLP's initialisation is PyTorch's ``nn.Linear``
default, ``U(−1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases, as there; LeakyReLU's
slope is PyTorch's default 0.01.

The bias is this framework's own scheme (``posenc/encodings/{alibi,kerple,fire}.py``), built
inside DAPE as the official runs build it (``megatron/model/transformer.py``,
``ParallelSelfAttention.__init__``, which creates ``AliBi_C``, ``ParallelKerpleLog_C(neox_args,
layer_number)`` or ``FIRE_C`` in every attention layer; the classes are in
``megatron/model/positional_embeddings.py``):

* KERPLE: one ``(r1, r2)`` pair per layer, ``params["scheme_layer<l>"]`` (``ParallelKerpleLog_C``
  owns its ``bias_p, bias_a``; standalone KERPLE, ``kerple.py``, shares one pair across the
  layers, as KERPLE's own code does). Initialisation and clamping are KERPLE's.
* FIRE: ``params["scheme"]``, FIRE's own per-layer functions, with two differences from
  standalone FIRE (``fire.py``, Li et al.'s ReLU and ``L₀ = 512``), both from ``FIRE_C``:
  its MLP ``1 → 32 → H`` uses ``LeakyReLU()`` (slope 0.01), and its threshold starts at
  ``init_L // 2`` (``L_multiplier`` starts at 1). ``init_L`` is ``neox_args.noise_seq_length``
  ("maximum noise sequence length to process (for FIRE init_L)", ``neox_args.py``), a
  setting of its own; here it is the training bound, so the threshold starts at
  ``Dims.train_positions // 2``, half the positions training reaches (``encoding.fire_threshold``
  sets it instead). Note: the released configs (``configs/125M/512/125M_fire_c.yml`` and its
  siblings, training length ``seq-length: 512``) set ``noise_seq_length: 128``, so the
  official 512-token runs start at 64, an eighth of their training length;
  ``--config.encoding.fire_threshold`` sets such a value.
  (``DAPE.py``'s stand-alone ``FIRE_DAPE`` has the same LeakyReLU but ``init_L = 512`` without
  the halving; the training code does not use it.)
* ALiBi: parameter-free, ``AliBi_C``'s slopes.

An encoder uses each scheme's encoder form. Valid in both modes: the MLP is pointwise, so it
adds no direction of its own. The term depends on positions only through the bias, so a
decoding step (one query against the cached keys) computes it exactly.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from posenc.encodings import alibi, fire, kerple
from posenc.encodings.base import Encoding as _Base
from posenc.errors import ConfigError

NEGATIVE_SLOPE = 0.01  # torch.nn.LeakyReLU's default


class FireEncoding(fire.Encoding):
  """FIRE as DAPE's official code builds it (``FIRE_C``): LeakyReLU(0.01) in its MLP."""

  NEGATIVE_SLOPE = NEGATIVE_SLOPE


BIASES = {"alibi": alibi.Encoding, "kerple": kerple.Encoding, "fire": FireEncoding}
# Bias schemes whose own module shares its parameters across layers, while the official DAPE
# builds one per attention layer: here one module per layer (``scheme_layer<l>``).
PER_LAYER = ("kerple",)


def adaptive_term(content: jax.Array, bias: jax.Array, w1: jax.Array, b1: jax.Array,
                  w2: jax.Array, b2: jax.Array) -> jax.Array:
  """``b + f([x; b])`` float32 ``[B, H, Lq, Lk]``.

  ``content x [B, H, Lq, Lk]`` (scaled content logits), ``bias b [B|1, H, Lq, Lk]``;
  ``w1 [2H, W]`` (rows: the ``H`` logits, then the ``H`` biases), ``b1 [W]``, ``w2 [W, H]``,
  ``b2 [H]``; ``f(u) = LeakyReLU_{0.01}(u·w1 + b1)·w2 + b2`` per pair.
  """
  x = jnp.asarray(content, jnp.float32)
  b = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), x.shape)
  h = x.shape[1]
  hidden = (jnp.einsum("bcqk,cw->bqkw", x, w1[:h]) + jnp.einsum("bcqk,cw->bqkw", b, w1[h:]) + b1)
  hidden = jax.nn.leaky_relu(hidden, NEGATIVE_SLOPE)
  return b + jnp.einsum("bqkw,wh->bhqk", hidden, w2) + b2[None, :, None, None]


def _torch_linear_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Encoding(_Base):
  """Adds ``b + f([q·k/sqrt(d_h); b])`` to every layer's logits, ``b`` from ``bias``'s scheme."""

  bias: str = "kerple"  # the bias scheme DAPE reads: alibi | kerple | fire
  mlp_width: int = 32   # W, the MLP's hidden width
  # bias=fire only: FIRE's initial threshold L̂; 0: Dims.train_positions // 2 (see above).
  fire_threshold: float = 0.0

  def threshold(self) -> float:
    """The initial threshold of DAPE's FIRE: ``fire_threshold``, or half the training bound."""
    if self.fire_threshold:
      return float(self.fire_threshold)
    return float(self.dims.train_positions // 2)

  def bias_scheme(self, **kwargs) -> nn.Module:
    """The bias scheme's module as DAPE builds it (``kwargs``: ``name=``, ``parent=``)."""
    extra = {"init_length": self.threshold()} if self.bias == "fire" else {}
    return BIASES[self.bias](dims=self.dims, **extra, **kwargs)

  def check(self, max_position):
    if self.bias not in BIASES:
      raise ConfigError("config.encoding.bias",
                        f"unknown bias scheme {self.bias!r}; choose one of {', '.join(BIASES)}")
    if self.mlp_width < 1:
      raise ConfigError("config.encoding.mlp_width", f"must be >= 1, got {self.mlp_width}")
    if self.fire_threshold < 0:
      raise ConfigError("config.encoding.fire_threshold",
                        f"must be >= 0 (0: half the training positions), got {self.fire_threshold}")
    if self.fire_threshold and self.bias != "fire":
      raise ConfigError("config.encoding.fire_threshold",
                        f"applies only to --config.encoding.bias=fire (bias is {self.bias!r}); "
                        "leave it at 0")
    if self.bias == "fire" and self.threshold() <= 0:
      raise ConfigError("config.encoding.fire_threshold",
                        "0 starts FIRE's threshold at half the training positions, but this model "
                        f"was given {self.dims.train_positions} (Dims.train_positions); set "
                        "--config.encoding.fire_threshold to a positive number of positions")
    self.bias_scheme(parent=None).check(max_position)

  def setup(self):
    heads = self.dims.num_heads
    if self.bias in PER_LAYER:
      self.inner = [self.bias_scheme(name=f"scheme_layer{l}") for l in range(self.dims.num_layers)]
    else:  # one module: FIRE keeps its per-layer functions inside it, ALiBi has no parameters
      self.inner = self.bias_scheme(name="scheme")
    first, second = _torch_linear_init(2 * heads), _torch_linear_init(self.mlp_width)
    param = lambda name, init, shape: self.param(name, init, shape, jnp.float32)
    self.mlps = [(param(f"mlp_layer{l}_w1", first, (2 * heads, self.mlp_width)),
                  param(f"mlp_layer{l}_b1", first, (self.mlp_width,)),
                  param(f"mlp_layer{l}_w2", second, (self.mlp_width, heads)),
                  param(f"mlp_layer{l}_b2", second, (heads,)))
                 for l in range(self.dims.num_layers)]

  def logits(self, q, k, q_pos, k_pos, layer):
    scale = self.content_scale() / math.sqrt(self.dims.head_dim)
    content = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    inner = self.inner[layer] if self.bias in PER_LAYER else self.inner
    bias = inner.logits(q, k, q_pos, k_pos, layer)
    return adaptive_term(content, bias, *self.mlps[layer])
