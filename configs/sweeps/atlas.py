"""The atlas v2: which encoding extrapolates, once it has learned its task in range.

One committed, reproducible answer, filled on a 2-core CPU and kept as data in
``experiments/atlas/`` (each point's ``results.json`` / ``config.json`` and each seed's, plus
the collected report; see ``experiments/atlas/README.md``)::

  python -m experiments.sweep --config=configs/sweeps/atlas.py --root=experiments/atlas
  python -m experiments.collect experiments/atlas        # -> experiments/atlas/report/

The sweep skips every point whose ``results.json`` was made with the point's config (same
config hash), so it resumes the committed atlas over several sittings and workers.

Points (``get_sweep``): one point per row × task, each a run of :data:`SEEDS` seeds in one
program (``num_seeds``; seeds 0..5, each stopping at its own criterion and reporting its own
results under ``seeds/seed<k>/``):

* **encoder** (transducer, Delétang et al. 2023): every scheme whose ``MODES`` include
  "encoder" (discovered), plus randomized positions on :data:`RANDOMIZED`, the set Ruoss et
  al. 2023 randomize (sin/cos, relative = Transformer-XL's, ALiBi, RoPE, learned), on
  :data:`ENCODER_TASKS`: every Chomsky level, two tasks each for DCF and CS, one for R (why
  parity_check left: below).
* **decoder** (causal, ``prompt SEP answer``, Kazemnejad et al. 2023): every scheme whose
  ``MODES`` include "decoder" (NoPE included), on :data:`DECODER_TASKS`; headline metric
  greedy exact match of the whole answer (``eval.greedy``), teacher-forced accuracy beside it.

Protocol (v2), and why:

=====================  ==========================  ==========================
field                  encoder                     decoder
=====================  ==========================  ==========================
model                  2 layers, d = 64, 4 heads, FFN 128, no dropout (the default preset)
layer norm             post-LN (the papers')       pre-LN (``configs/decoder.py``)
training lengths       1–12, programs per bucket chosen from the cap (``num_buckets = 0``);
                       every seed draws seed 0's step lengths (``length_seed = 0``)
criterion              every 200 steps: the longest quarter of the training lengths (10–12),
                       128 held-out samples per length, ≥ 0.95 per-token accuracy (decoder:
                       teacher-forced, ``criterion.metric = "accuracy"``; exact match beside it)
cap                    :data:`STEPS` steps × batch 64; Adam 1e-3, 100 warm-up steps, constant
evaluation             1–48 (4 × 12), 256 samples per length, one fixed set per task
                       (``eval.seed``), shared by every seed and scheme
randomized positions   drawn from [0, 192) = 4 × the longest evaluated length (Ruoss et
                       al.'s ratio: 2048 for lengths to 500)
=====================  ==========================  ==========================

* **Learned first.** v1 trained 1,000 steps with a cosine schedule and 46% of its points never
  learned their task in range. v2 trains each seed until it passes the in-range criterion
  (``config.criterion``, ``posenc.criterion``) or the cap; a constant learning rate after
  warm-up, so a seed's schedule does not depend on the cap it may never reach. Rankings use
  learned seeds only (``experiments.stats``).
* **One criterion for both forms: per-token accuracy.** The encoder's is Delétang et al.'s
  per-token accuracy; the decoder's is the teacher-forced per-token accuracy of the answer (not
  its greedy exact match, which stays the decoder's headline metric). The decoder pilot
  (docs/atlas.md) trained with exact match ≥ 0.95 as the criterion: copy, which RoPE and conv
  learn by ~4,000 steps, stayed unlearned to the 6,000-step cap for NoPE, ALiBi and complex
  (exact match 0.63–0.92, per-token ≈ 0.97–0.99), and no change of width, depth, learning rate,
  schedule or training length moved NoPE within 4,000 steps; a cap long enough for it would
  double the decoder half's hours. Per-token accuracy asks of a decoder what it asks of an
  encoder, whose reverse_string at 0.95 per-token is no closer to exact; the heatmaps show the
  decoder's in-range exact match beside its beyond-range score, so a cell learned on tokens
  but not on whole answers is visible.
* **Seeds.** 6 per cell (v1: 2, whose intervals were ±10 points), in one program: on this
  2-core CPU an even count splits over one device per core (3 seeds each), and six seeds that
  share their step lengths finish a 1,000-step point sooner than five did on one device
  (99 s against 111 s; docs/throughput.md).
* **Evaluation.** 4 × the longest training length, 256 samples per length, the same samples
  for every seed and scheme of a task (``eval.seed = 1000``), so cells differ only by the model.
* **parity_check left the atlas** (2026-12-07, after 5 of its points). At this size and cap
  it is learned in range by complex and conv (6 of 6 seeds each) but not by ALiBi (2 of 6;
  its checks swing between 0.4 and 0.97 from one check to the next), learned (2 of 6) or
  recurrent (0 of 6): 2 of 5 points, where a ranked task needs 90%, and no change of the
  shared protocol for one task would be the same protocol. Its beyond-range accuracy was at
  chance (0.49–0.52) for all five, as Delétang et al. find for every encoding. The other R
  tasks (cycle_navigation, modular_arithmetic) are counts modulo 5, parity's kind of
  function, so none replaces it, and the 16-hour budget is already short; the R level is
  even_pairs alone. The five points are recorded in ``docs/atlas.md``.
* The pilot that sized the cap and its timings are in ``docs/atlas.md``.
"""

from __future__ import annotations

import ml_collections

from configs.sweeps import sweep_config
from posenc import encodings, sweeps
from posenc.errors import ConfigError

# Every Chomsky level: R, DCF, CS (Delétang et al. 2023, Table 2's rows); two per level where
# two are learned in range at this size (R: parity_check was not; the docstring says why).
ENCODER_TASKS = ("even_pairs",                            # R
                 "reverse_string", "stack_manipulation",  # DCF
                 "odds_first", "bucket_sort")             # CS
# Kazemnejad et al. 2023's copy and sorting, addition with the sum written least significant
# digit first (their most-significant-first format stayed unlearned in range: RoPE, 6,000
# steps, exact match 0.10 at lengths 10-12; reversed: 0.70 and rising; docs/atlas.md), and one
# Chomsky task in decoder form.
DECODER_TASKS = ("copy", "addition_reversed", "sorting", "reverse_string")
# Schemes that also get randomized positions: the set Ruoss et al. 2023 randomize (their
# official code: SIN_COS, RELATIVE = Transformer-XL's, ALIBI, ROTARY, LEARNT).
RANDOMIZED = ("sinusoidal", "transformer_xl", "alibi", "rope", "learned")

TRAIN_MAX = 12
EVAL_MAX = 4 * TRAIN_MAX
STEPS = 6000   # the cap; most seeds stop earlier, at the criterion
SEEDS = 6  # even: the seeds split over the 2 cores (posenc.seeds.seed_loop)
# Settings of both forms (the encoder's values; decoder points override DECODER's keys).
_SHARED = {
    "smoke": {"model.causal": False, "positions.max_position": 64, "num_seeds": 2,
              "criterion.every": 2, "eval.seed": 1000},
    "default": {"model.causal": False, "task.train_max_length": TRAIN_MAX,
                "num_seeds": SEEDS, "train.steps": STEPS, "train.batch_size": 64,
                "train.schedule": "constant", "train.warmup_steps": 100,
                # programs per bucket of lengths chosen from the cap; the seeds draw seed 0's
                # lengths, so that five seeds pad as one run (issue 40; docs/throughput.md)
                "train.num_buckets": 0, "train.length_seed": 0,
                "criterion.every": 200, "criterion.samples_per_length": 128,
                "eval.max_length": EVAL_MAX, "eval.samples_per_length": 256,
                "eval.batch_size": 128, "eval.num_buckets": 2, "eval.seed": 1000,
                "positions.max_position": 4 * EVAL_MAX, "checkpoint.every_steps": 1000,
                "checkpoint.max_to_keep": 1,
                # the report draws every point; a point's own figures would not be kept
                "plots": False},
}
# What a decoder point sets on top (its workdir name carries these keys).
DECODER = {"model.causal": True, "model.pre_ln": True, "eval.greedy": True,
           # the criterion scores per-token (teacher-forced) accuracy, as the encoder's does;
           # greedy exact match stays the headline metric (the docstring says why)
           "criterion.metric": "accuracy"}
RANDOM = {"positions.kind": "randomized"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  if preset not in _SHARED:
    raise ValueError(f"the atlas has one protocol (default) and a smoke preset for tests; "
                     f"got {preset!r} (use configs/sweeps/chomsky.py:paper for the paper's)")
  c = sweep_config(arg, name="atlas", shared=_SHARED[preset], seeds=1)
  c.workdir = "experiments/atlas" if preset == "default" else c.workdir
  c.sweep.prune_finished = True  # keep results.json / config.json / DONE, not checkpoints
  return c


def _form_tasks(config: ml_collections.ConfigDict, wanted: tuple[str, ...],
                levels: tuple[str, ...]) -> list[str]:
  """``wanted`` (in that order) that ``sweep.tasks`` keeps; unknown filter names are errors."""
  available = sweeps.tasks_at(levels)
  every = sorted(set(ENCODER_TASKS) | set(DECODER_TASKS))
  chosen = sweeps.selected("config.sweep.tasks", config.sweep.tasks, every, every,
                           "is not an atlas task")
  return [t for t in wanted if t in chosen and t in available]


def get_sweep(config: ml_collections.ConfigDict) -> list[dict]:
  enc_schemes, dec_schemes = sweeps.schemes("encoder"), sweeps.schemes("decoder")
  every = sorted(set(enc_schemes) | set(dec_schemes))
  chosen = set(sweeps.selected("config.sweep.schemes", config.sweep.schemes, every, every,
                               "is not valid in an encoder or a decoder"))
  enc_tasks = _form_tasks(config, ENCODER_TASKS, sweeps.CHOMSKY_LEVELS)
  dec_tasks = _form_tasks(config, DECODER_TASKS, (*sweeps.CHOMSKY_LEVELS, "decoder"))
  points = []
  for seed in range(config.sweep.seeds):
    for task in enc_tasks:
      for scheme in enc_schemes:
        if scheme in chosen:
          points.append({"scheme": scheme, "task.name": task, "seed": seed})
      for scheme in RANDOMIZED:
        if scheme in chosen and scheme in enc_schemes:
          # a position table (learned) needs a row for every position randomized training
          # draws: [0, positions.max_position), every row of it trained
          table = ({"encoding.max_len": 4 * EVAL_MAX}
                   if "max_len" in encodings.get(scheme).options() else {})
          points.append({"scheme": scheme, "task.name": task, "seed": seed, **RANDOM, **table})
    for task in dec_tasks:
      for scheme in dec_schemes:
        if scheme in chosen:
          points.append({"scheme": scheme, "task.name": task, "seed": seed, **DECODER})
  if not points:
    raise ConfigError("config.sweep.schemes", "no atlas point is left after the schemes and "
                      "tasks filters; widen --config.sweep.schemes / --config.sweep.tasks")
  return points
