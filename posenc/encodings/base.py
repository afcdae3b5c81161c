"""The encoding contract: pure math in each scheme's file, plus a thin module.

Every scheme lives in ``posenc/encodings/<name>.py`` and defines a class
``Encoding`` (a subclass of :class:`Encoding` below, i.e. a ``flax.linen``
module). The Transformer calls whichever of these hooks the class defines, at
fixed points, and never branches on the scheme's name:

=================================================  =========================================
hook                                                called / returns
=================================================  =========================================
``token_embed(tokens, positions)``                  replaces the token embedding -> ``x``
``embed(x, positions[, valid])``                    once, on the token embeddings -> new ``x``
``layer_input(x, positions, layer)``                before each block -> new ``x``
``project(q, k, v, q_pos, k_pos, layer[, context, valid])``  after q/k/v projections -> ``q, k, v``
``logits(q, k, q_pos, k_pos, layer[, mask])``       inside attention -> additive ``[B|1,H,Lq,Lk]``
``values(weights, q_pos, k_pos, layer)``            after softmax -> additive ``[B,Lq,H,Dh]``
``projection(x, kind, layer)``                      replaces a projection (see below)
``attend(q, k, v, q_pos, k_pos, mask, layer)``      replaces scores/softmax/mixing -> ``o, w``
=================================================  =========================================

The last two let a scheme own the attention sublayer (complex order's complex-valued
attention): with ``projection``, the model calls ``projection(x, kind, layer)`` for
``kind`` in ``"query"``, ``"key"``, ``"value"`` on the block's input ``[B, L, D]`` (each
returning ``[B, L, H, E]``, any per-head width ``E`` the scheme's attention reads) and
``projection(o, "out", layer)`` on the attention output (returning ``[B, L, D]``), and creates
no projections of its own; ``project`` still applies after it and the key/value cache stores
what it returns. With ``attend``, the model hands over the projected (and ``project``-ed,
in decoding the cached) ``q, k, v``, the query and key positions and the boolean ``mask``
``[B|1, 1, Lq, Lk]`` (padding, causality, decoding step all in it) and takes back the output
``o`` ``[B, Lq, H, E]`` and the weights ``w`` ``[B, H, Lq, Lk]`` (sown when attention is
captured; None if the scheme never forms them). The model then adds no ``logits`` or
``values`` term and ignores ``CONTENT_SCALE``: a scheme with ``attend`` computes everything
inside attention itself (its own scores, gates, stick-breaking or forgetting weights).

What these hooks may carry, so that no scheme needs a hook of its own:

* a bias computed from the layer's input: ``projection`` may return per-head widths that
  differ by ``kind``; extra key channels computed from ``x`` (one per token) ride in the
  key/value cache with the key, so ``attend`` sees them for every cached token in a decoding
  step (FoX: ``log f_t`` in the key's last channel, float32);
* a replacement for the softmax: ``attend`` forms any weights from ``q, k`` and ``mask``;
  the mask is where the order of the keys lives (the query's own key is the last key its row
  sees, in a full pass and in a decoding step alike: stick-breaking starts there);
* a function of the content logits: ``logits`` may recompute ``q·k·content_scale()/sqrt(Dh)``
  and return any function of it and the positions, as the additive term (DAPE's MLP over
  ``[logits; bias]``; CoPE's gates).

Shapes: ``tokens`` is int32 ``[B, L]`` (ids below ``dims.vocab_size``); ``x`` is ``[B, L, D]``; ``q, k, v`` are ``[B, L, H, Dh]``; positions are
int32 ``[B|1, L]`` (explicit, never an implicit ``arange``); ``weights`` are
``[B, H, Lq, Lk]``; ``layer`` is a Python int.

Class attributes a scheme may set:

* ``MODES``: which model modes it is valid in, a subset of ``("encoder", "decoder")``.
* ``MODE_REASON``: one sentence saying why the other mode is refused.
* ``QKV_BIAS``: whether the q/k/v projections carry their own bias (FLOATER: no).
* ``CONTENT_SCALE``: multiplies the content logits ``q·k / sqrt(Dh)``
  (DeBERTa and TUPE rescale them). The model reads it through ``content_scale()``, which a
  scheme overrides when an option sets the scale per instance (T5's ``qk_scaling="none"``).
* ``EVAL_CACHE``: names of batch-free arrays that ``setup`` computes from the parameters
  alone (FLOATER's solved table). Evaluation computes them once, for its longest length,
  and passes them to every program in the ``"cache"`` collection; ``setup`` then uses
  ``self.get_variable("cache", name)`` instead of recomputing.
* ``PROJECT_CONTEXT``: ``project`` is also given ``context=``, the positions of the whole
  sequence ``[B|1, L]`` (xPos centres its scaling on them, the same in every decoding step).
* ``EMBED_VALID``: ``embed`` is also given ``valid=``, the boolean ``[B, L]`` mask of the
  rows' real tokens (False at the padding that fills a batch to its bucket's length), so
  that a hook reading neighbouring tokens never lets padding reach a real position (conv);
  in a decoding step, the new token's entry ``[B, 1]``.
* ``PROJECT_VALID``: ``project`` is also given ``valid=``, the real tokens ``[B, L]`` of the
  whole sequence (in a decoding step, of the whole buffer, as ``context``): with ``context``,
  each row's own extent, e.g. its length (RoPE's context extension scales each sequence by
  it, never by the padded length of its bucket).
* ``LOGITS_MASK``: ``logits`` is also given ``mask=``, the boolean attention mask
  ``[B|1, 1, Lq, Lk]`` (which keys each query sees; CoPE counts only those).
* ``"diagnostics"`` collection: in the training step a module may ``put_variable`` scalars
  there (when ``is_mutable_collection("diagnostics")``); they become metrics of the step
  (FLOATER: ``ode_status``, ``ode_steps``), and ``explain_failure`` turns them into the error
  message when the loss goes NaN. This keeps runtime checks out of the compiled step (no host
  callbacks).
* ``report(train_positions)`` (optional method): jittable scalars about the trained parameters,
  computed once after evaluation at the longest evaluated position and written to
  ``results.json`` as ``encoding_report`` (``posenc.evaluation.encoding_report``; FLOATER: its
  trajectory's growth past the training positions and the evaluation solve's step count).
* ``SHARD_MAP``: False when the scheme's gradients cannot be taken inside ``jax.shard_map``
  (FLOATER: equinox's checkpointed while loops in diffrax, diffrax issue #765); seeds split
  over devices then use the partitioned form (``posenc.seeds.seeded``, ``shard_spmd``).

In incremental decoding (``Transformer(decode="step")``) the query side is one token
(``Lq = 1``, ``q_pos`` its position) and the key side is the whole cached buffer
(``k_pos`` all its positions, keys past the new token masked), so hooks must treat
``q_pos`` and ``k_pos`` as independent arrays. ``incremental()`` says whether that is
possible at all: False for schemes whose ``embed`` reads the token sequence, unless
``embed_window()`` bounds how far back it reads: then the model caches ``embed``'s inputs
(``"kv"`` collection) and, in a step, calls ``embed`` on the last ``embed_window() + 1``
slots of the buffer (the earliest zero-filled and not valid before slot 0), keeping the
last row (conv's causal convolution reads ``kernel_size − 1`` earlier slots).

Parameters are created in ``setup`` (per-layer tables as lists indexed by
``layer``; shared ones once), so layer sharing is the scheme's own business.
``self.dims`` gives the model's sizes and the static bound on positions of the
program being compiled; ``self.dims.contiguous`` says that every positions array in the
program is ``[1, L]`` and equals ``positions[0, 0] + arange(L)``, so a hook may read a
table with a slice instead of a gather (``dynamic_slice`` keeps the table's layout, which
a gather does not). ``check(max_position)`` is called with the largest
position a run will use, before any compute, and raises :class:`ConfigError`
when the scheme cannot represent it.

All position math runs in float32 whatever the activation dtype.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn

HOOKS = ("token_embed", "embed", "layer_input", "project", "logits", "values", "projection",
         "attend")


@dataclasses.dataclass(frozen=True)
class Dims:
  """Model sizes an encoding needs.

  ``max_position`` is a static bound: every position in the program is
  ``< max_position`` (schemes that precompute a table solve it to this size).
  ``train_length`` is the longest training sequence (input plus answer), the
  "original context length" of context-extension methods; ``vocab_size`` is
  the number of token ids (for schemes that own the token embedding).
  ``contiguous``: every positions array of the program is ``[1, L]`` and equals
  ``positions[0, 0] + arange(L)`` (shared by the batch, no gaps); False promises nothing.
  ``train_positions``: every position a real (unpadded) training token can have is below it,
  the same in every program of a run (offsets and randomized positions included; padding
  positions are excluded: they are masked, so table rows there get no gradient); 0: unknown.
  """

  d_model: int
  num_heads: int
  num_layers: int
  causal: bool
  max_position: int
  train_length: int = 0
  vocab_size: int = 0
  contiguous: bool = False
  train_positions: int = 0

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def mode(self) -> str:
    return "decoder" if self.causal else "encoder"


class Encoding(nn.Module):
  """Base class of every scheme's module (see the module docstring)."""

  dims: Dims

  MODES: ClassVar[tuple[str, ...]] = ("encoder", "decoder")
  MODE_REASON: ClassVar[str] = ""
  QKV_BIAS: ClassVar[bool] = True
  CONTENT_SCALE: ClassVar[float] = 1.0
  EVAL_CACHE: ClassVar[tuple[str, ...]] = ()
  LOGITS_MASK: ClassVar[bool] = False
  EMBED_VALID: ClassVar[bool] = False
  PROJECT_VALID: ClassVar[bool] = False
  PROJECT_CONTEXT: ClassVar[bool] = False
  SHARD_MAP: ClassVar[bool] = True
  INCREMENTAL: ClassVar[bool] = True

  def incremental(self) -> bool:
    """Whether a causal model with this scheme can decode with a cache: a token's output
    depends on earlier tokens only through attention, or through ``embed`` reading at most
    ``embed_window()`` earlier slots."""
    return self.INCREMENTAL

  def embed_window(self) -> int | None:
    """How many earlier slots ``embed`` reads for one output in a causal model (None: none,
    or no bound); the model caches ``embed``'s inputs for decoding when it is set."""
    return None

  def content_scale(self) -> float:
    """The factor on ``q·k / sqrt(Dh)`` (a Python float; default ``CONTENT_SCALE``)."""
    return self.CONTENT_SCALE

  def eval_cache_names(self) -> tuple[str, ...]:
    """The ``EVAL_CACHE`` arrays this module's options need (default: all of them)."""
    return self.EVAL_CACHE

  def check(self, max_position: int) -> None:
    """Raises ConfigError if positions up to ``max_position - 1`` cannot be encoded."""
    del max_position

  @classmethod
  def explain_failure(cls, diagnostics: dict, encoding_config, num_positions: int) -> str | None:
    """Why training went NaN, read from the ``diagnostics`` metrics; None: no known cause."""
    del diagnostics, encoding_config, num_positions
    return None

  @classmethod
  def hooks(cls) -> tuple[str, ...]:
    return tuple(h for h in HOOKS if callable(getattr(cls, h, None)))

  @classmethod
  def options(cls) -> dict:
    """The scheme's config fields and their defaults (``dims``, ``name``, ``parent`` excluded)."""
    out = {}
    for f in dataclasses.fields(cls):
      if f.name in ("dims", "name", "parent"):
        continue
      if f.default is not dataclasses.MISSING:
        out[f.name] = f.default
      elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        out[f.name] = f.default_factory()  # type: ignore[misc]
    return out
