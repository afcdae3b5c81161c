"""One line of meaning for every config field: what ``--show_config`` prints beside its value.

``python -m experiments.run --config=configs/rope.py:smoke --show_config`` (or
``experiments.sweep ... --show_config`` for a sweep file) lists every ``config.*`` field of that
config file and preset with its value and the line given here. The table is the one place these
meanings live: :data:`FIELDS` for the shared tree (``configs/base.py``, the language-modelling
task's fields of ``configs/lm/base.py``, a sweep file's ``sweep`` block), :data:`ENCODING` for
each scheme's own ``encoding.*`` fields (the options of ``posenc/encodings/<scheme>.py``). A
sweep's ``sweep.shared.<field>`` is described as the field it sets on every point.

``tests/test_cli_help.py`` checks that every field of every config file under ``configs/`` at
every preset, and every option of every scheme, has a line here, and that no line describes a
field that no longer exists; a new field without one fails there.

Importing this module imports neither JAX nor any scheme.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

# The shared tree: configs/base.py (every run), configs/lm/base.py (task ``lm``), sweep files.
FIELDS: dict[str, str] = {
    "preset": "the preset this config was built with (smoke, default, paper); set it with "
              "--config=FILE:PRESET, not here",
    "seed": "random seed of parameters, data and dropout (with num_seeds: the first seed)",
    "num_seeds": "train seeds seed..seed+num_seeds-1 in one compiled program",
    "seed_loop": "how seeds share the program: auto, vmap, map or shard (posenc/seeds.py)",
    "workdir": "run folder; empty: runs/<scheme>-<task>-<preset>-seed<seed>-<hash> (sweeps: "
               "the sweep's root)",
    "plots": "draw plots/*.png at the end of a run (results.json is written either way)",

    "task.name": "the task trained and evaluated (posenc/tasks; lm: byte-level language "
                 "modelling)",
    "task.train_min_length": "shortest input length trained on",
    "task.train_max_length": "longest input length trained on; longer ones are beyond range",
    "task.corpus": "lm: text file or folder to model; empty: the Python standard library's "
                   "sources",
    "task.corpus_glob": "lm: which files of a folder corpus are read (recursive glob)",
    "task.valid_fraction": "lm: share of the corpus files held out for evaluation",
    "task.eval_multipliers": "lm: evaluation lengths, as multiples of task.train_max_length",
    "task.eval_tokens": "lm: validation bytes scored at every evaluation length",
    "task.eval_windows": "lm: windows scored at fixed end points (second protocol)",
    "task.eval_final_tokens": "lm: final predictions scored per window (second protocol)",
    "task.eval_batch_tokens": "lm: tokens per evaluation batch (windows = this // length)",

    "model.causal": "a causal decoder (True) or a bidirectional encoder (False)",
    "model.d_model": "width of the residual stream",
    "model.num_heads": "attention heads per layer",
    "model.num_layers": "Transformer layers",
    "model.d_ff": "hidden width of the feed-forward block",
    "model.dropout": "residual dropout rate (embeddings and each sub-layer's output)",
    "model.pre_ln": "LayerNorm before each block (True) or after it (False, the original)",
    "model.embed_scale": "multiply token embeddings by sqrt(d_model)",
    "model.activation": "feed-forward activation: relu, gelu or silu",
    "model.dtype": "activation and matmul dtype: float32 or bfloat16 (parameters stay float32)",

    "encoding.name": "the position-encoding scheme (posenc/encodings/<name>.py); pick it with "
                     "--config=configs/<name>.py, which also sets its own fields",

    "positions.kind": "contiguous (0, 1, 2, ...) or randomized (sorted draws, Ruoss et al. 2023)",
    "positions.max_position": "randomized: positions are drawn from [0, max_position)",
    "positions.per_example": "randomized: one draw per sequence (False: one per batch)",
    "positions.offset": "contiguous: the first position (offset, offset+1, ...)",
    "positions.random_offset": "contiguous: draw the offset per sequence from [0, max_position - length]",
    "positions.eval": "evaluation positions: same (as training) or contiguous (no sampling)",

    "train.steps": "training steps (0: only evaluate, e.g. with init.from_workdir)",
    "train.batch_size": "sequences per training step",
    "train.learning_rate": "peak learning rate (Adam; AdamW with weight_decay)",
    "train.schedule": "learning-rate schedule: constant or cosine",
    "train.warmup_steps": "linear warm-up steps before the schedule",
    "train.weight_decay": "AdamW weight decay (0: plain Adam)",
    "train.grad_clip": "clip gradients to this global norm (0: no clipping)",
    "train.log_every": "log and record metrics every this many steps",
    "train.num_buckets": "training programs, one per bucket of lengths (1: one program padded "
                         "to the longest; 0: chosen from the run's length)",
    "train.length_seed": "-1: each seed draws its own step lengths; s >= 0: all seeds draw "
                         "seed s's, and pad as one run",

    "criterion.every": "score the learning criterion every this many steps (0: no criterion)",
    "criterion.threshold": "the run has learned once the criterion's score reaches this",
    "criterion.top_fraction": "criterion: share of the longest training lengths scored",
    "criterion.samples_per_length": "criterion: held-out samples scored per length",
    "criterion.metric": "criterion's score: accuracy, exact_match, or auto (exact match "
                        "where eval.greedy decodes, else accuracy)",
    "criterion.stop": "end the run once learned (False: train to train.steps, record the step)",

    "eval.min_length": "shortest length evaluated",
    "eval.max_length": "longest length evaluated",
    "eval.samples_per_length": "samples scored at each evaluated length",
    "eval.batch_size": "sequences per evaluation batch",
    "eval.num_buckets": "at most this many compiled evaluation programs (lengths bucketed)",
    "eval.micro_batch": "rows per forward pass in evaluation (0: automatic); scores do not "
                        "depend on it",
    "eval.greedy": "decoders: also decode answers greedily and report exact match",
    "eval.seed": "seed of the evaluation set (-1: from the run's seed; fixed: the same samples "
                 "for every seed and scheme)",

    "init.from_workdir": "warm start: copy parameters by name from this run's checkpoint",
    "init.step": "warm start: the checkpoint step to copy (0: the latest)",

    "checkpoint.every_steps": "save a checkpoint every this many steps",
    "checkpoint.max_to_keep": "checkpoints kept (the oldest are deleted)",

    # A sweep file's block (configs/sweeps/__init__.py, experiments/sweeping.py).
    "sweep.name": "the sweep's name; its default root is runs/sweeps/<name>-<preset>",
    "sweep.seeds": "seeds 0..seeds-1 of every scheme and task",
    "sweep.schemes": "comma-separated schemes to keep (empty: every scheme that applies)",
    "sweep.tasks": "comma-separated tasks to keep (empty: every task that applies)",
    "sweep.learning_rates": "comma-separated learning rates, one point each (empty: the "
                            "config's train.learning_rate)",
    "sweep.configs": "package of the per-scheme config files a point loads (configs, "
                     "configs.lm)",
    "sweep.prune_finished": "delete a finished point's checkpoints and TensorBoard events, "
                            "keeping its results",
}

# Each scheme's own fields (posenc/encodings/<scheme>.py, the Encoding dataclass's options).
_BASE = "sinusoid frequency base: frequencies base^(-2m/d)"
ENCODING: dict[str, dict[str, str]] = {
    "alibi": {
        "direction": "encoder form of the bias: asymmetric (Ruoss et al.) or symmetric",
    },
    "complex": {
        "base": _BASE,
        "attention": "complex (the paper's attention) or real ([Re|Im] into real attention)",
    },
    "conv": {
        "kernel_size": "width of the positional convolution",
        "groups": "groups of the grouped convolution",
    },
    "cope": {
        "npos_max": "rows of the contextual position table; positions clamp to npos_max - 1",
    },
    "dape": {
        "bias": "the bias scheme DAPE reads: alibi, kerple or fire",
        "mlp_width": "hidden width of DAPE's MLP",
        "fire_threshold": "bias=fire: FIRE's initial threshold (0: half the training positions)",
    },
    "deberta": {
        "position_buckets": "span of the log-bucketed relative distances (<= 0: "
                            "max_relative_positions)",
        "max_relative_positions": "span of relative distances when position_buckets <= 0",
    },
    "fire": {
        "mlp_width": "hidden width of FIRE's MLP",
        "init_c": "initial c of the log transform log(c*x + 1)",
        "init_length": "L0: the learned threshold is |lambda * L0|",
        "shared": "one FIRE function for all layers (FIRE-S) instead of one per layer",
    },
    "floater": {
        "injection": "qkv (official: q/k/v biases) or layer_input (the paper's Eq. 6)",
        "method": "ODE solver: tsit5 (adaptive) or rk4 (fixed step dt / rk4_substeps)",
        "dt": "time between consecutive positions in the flow",
        "rtol": "tsit5: relative tolerance",
        "atol": "tsit5: absolute tolerance",
        "max_steps": "bound on adaptive solver steps per solve (a clear error beyond it)",
        "rk4_substeps": "rk4: steps per interval dt",
        "adjoint": "gradients: recursive (through the solver) or backsolve (adjoint method)",
        "checkpoints": "recursive adjoint's checkpoints (0: diffrax's default)",
        "sinusoidal_input": "also add the sinusoidal table to the input (official)",
        "base": _BASE + " (the flow's initial value)",
        "flow": "auto (free while training positions stay within t <= 2.55, else decay), free (the paper's), or bounded: decay, tanh, sphere",
        "flow_speed": "c: the bounded flows' speed limit |dp/dt| <= c",
        "flow_decay": "lambda of the decay flow: |p_i| <= max(|p_i(0)|, c/lambda)",
    },
    "hierarchical": {
        "max_len": "rows of the learned table (0: the training positions)",
        "alpha": "the decomposition's alpha, in (0, 1) and not 0.5",
    },
    "kerple": {
        "variant": "kernel: log or power",
        "positivity": "how its parameters stay positive: clamp or softplus",
    },
    "learned": {
        "max_len": "rows of the learned table",
        "fallback": "a position past the table: error (refused before the run) or clamp",
    },
    "multiplicative": {
        "variant": "learned (x * (1 + p)) or sinusoidal (x * p)",
        "max_len": "learned: rows of the table (0: the training positions)",
        "fallback": "learned: a position past the trained rows: clamp (the last trained row) or error",
        "base": _BASE + " (variant=sinusoidal)",
    },
    "recurrent": {
        "form": "iterate (p_k+1 = f(p_k), a learned flow) or rnn (a GRU over the embeddings)",
        "hidden": "iterate: width of the step network's tanh layer",
        "base": _BASE + " (iterate: the initial rotation and p_0)",
        "residual": "rnn: x + GRU(x) (False: GRU(x) alone)",
    },
    "rope": {
        "base": "rotary frequency base: theta_m = base^(-2m/d_h)",
        "pairing": "which channels rotate together: interleaved or half (GPT-NeoX / Llama)",
        "scaling": "context-extension rule: none, HF's static rules, dynamic_ntk, *_per_sequence",
        "factor": "scaling factor s (HF's); 0: refused by static rules, L'/L per sequence for *_per_sequence",
        "original_length": "L, the length the scaling rules extend from (0: the training length)",
        "beta_fast": "yarn: upper ramp bound (rotations within L)",
        "beta_slow": "yarn: lower ramp bound (rotations within L)",
        "low_freq_factor": "llama3: pairs with wavelength > L/low_freq_factor get theta/s",
        "high_freq_factor": "llama3: pairs with wavelength < L/high_freq_factor keep theta",
        "short_factor": "longrope: per-pair divisors within L (empty: all 1)",
        "long_factor": "longrope: per-pair divisors beyond L (d_h/2 numbers)",
        "attention_factor": "longrope and yarn: cos/sin scale (0: the rule's default)",
    },
    "sandwich": {
        "dim": "d': width of the sinusoids whose dot product is the bias",
    },
    "shaw": {
        "max_distance": "k: relative distances are clipped to [-k, k]",
    },
    "sinusoidal": {
        "base": _BASE,
        "scale": "multiplier of the table added to the embeddings",
    },
    "stickbreaking": {
        "attend_current": "the query's own key is a stick too (the first one)",
        "remainder": "the leftover weight goes to the query's own value",
    },
    "t5": {
        "num_buckets": "relative-distance buckets of the learned bias",
        "max_distance": "distances beyond this share the last bucket",
        "qk_scaling": "content logits: sqrt (q.k/sqrt(d_h)) or none (T5's own)",
    },
    "transformer_xl": {
        "base": _BASE,
        "form": "how relative logits are computed: factorized or gather (same values)",
    },
    "tupe": {
        "max_len": "rows of the absolute table (0: the training positions)",
        "fallback": "a position past the trained rows: clamp (the last trained row) or error",
        "relative": "TUPE-R: also add T5's bucketed relative bias",
        "num_buckets": "TUPE-R: relative-distance buckets",
        "max_distance": "TUPE-R: distances beyond this share the last bucket",
    },
    "xpos": {
        "scale_base": "gamma: the length scale of xPos's exponential decay",
        "base": "rotary frequency base, as rope's",
    },
}

SHARED_PREFIX = "sweep.shared."
MISSING = "(no description: add one to posenc/config_fields.py)"


def flat_items(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
  """``(dotted key, value)`` for every leaf of a (nested) ConfigDict, in the tree's order."""
  for key, value in config.items():
    if isinstance(value, Mapping) or hasattr(value, "items"):  # a block (ConfigDict, dict)
      yield from flat_items(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def description(key: str, scheme: str | None = None) -> str | None:
  """The line for field ``key`` (``encoding.*``: of ``scheme``), or None when there is none."""
  if key.startswith(SHARED_PREFIX):
    inner = description(key[len(SHARED_PREFIX):], scheme)
    return f"every point: {inner}" if inner else None
  if key.startswith("encoding.") and key != "encoding.name":
    return ENCODING.get(scheme or "", {}).get(key[len("encoding."):])
  return FIELDS.get(key)


def _show(value: Any) -> str:
  """A value as it would be written after ``--config.<field>=``."""
  if isinstance(value, str):
    return value if value else "''"
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def table(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
  """``(field, value, meaning)`` for every field of ``config``."""
  scheme = config.get("encoding", {}).get("name") if "encoding" in config else None
  return [(key, _show(value), description(key, scheme) or MISSING)
          for key, value in flat_items(config)]


def render(config: Mapping[str, Any], title: str) -> str:
  """The listing ``--show_config`` prints: a title line, then one aligned line per field."""
  rows = table(config)
  kw = max(len(k) for k, _, _ in rows)
  vw = min(max(len(v) for _, v, _ in rows), 24)
  lines = [title]
  for key, value, meaning in rows:
    lines.append(f"  {key:<{kw}}  {value:<{vw}}  {meaning}")
  return "\n".join(lines)
