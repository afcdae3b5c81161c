"""The atlas: which encoding extrapolates, every scheme on representative tasks, in both model forms.

One committed, reproducible answer, filled on a 2-core CPU and kept as data in
``experiments/atlas/`` (each point's ``results.json`` and ``config.json``, plus the collected
report; see ``experiments/atlas/README.md``)::

  python -m experiments.sweep --config=configs/sweeps/atlas.py --root=experiments/atlas
  python -m experiments.collect experiments/atlas        # -> experiments/atlas/report/

The sweep skips every point whose ``results.json`` was made with the point's config (same
config hash; no checkpoint or ``DONE`` needed), so it resumes the committed atlas, can be filled
over several sittings, and extended by anyone: add a scheme or task and run the same command.
Finished points keep only small files (``sweep.prune_finished``: checkpoints and TensorBoard
events are deleted once ``results.json`` is written).

Points (``get_sweep``), seeds ``0..sweep.seeds-1`` (2) each, seed-major so that a sweep stopped
early has a whole table of seed 0:

* **encoder** (transducer, Delétang et al. 2023): every scheme whose ``MODES`` include
  "encoder" (discovered), plus randomized positions (Ruoss et al. 2023) on
  :data:`RANDOMIZED` (the point key ``positions.kind=randomized``, positions drawn from
  ``[0, positions.max_position)`` in training and evaluation), on :data:`ENCODER_TASKS`: two
  tasks per Chomsky level.
* **decoder** (causal, ``prompt SEP answer``, Kazemnejad et al. 2023): every scheme whose
  ``MODES`` include "decoder" (NoPE included), on :data:`DECODER_TASKS` (copy, addition,
  sorting and reverse_string in decoder form), scored by teacher-forced per-token accuracy and
  by greedy exact match (``eval.greedy``: the whole answer decoded right).

``--config.sweep.schemes`` / ``--config.sweep.tasks`` narrow both forms (a filter naming only
encoder tasks leaves the decoder form empty, and the other way round). Not one grid but two
forms with their own task lists and extra keys, so ``get_sweep`` writes its loops out, with the
discovery and filter helpers of ``posenc.sweeps`` (format of a sweep file:
``configs/sweeps/__init__.py``).

Protocol (default preset), one per form; every other field is ``configs/base.py``'s default
preset (2 layers, d = 64, 4 heads, FFN 128, no dropout, Adam with clipping at 1):

=====================  ==========================  ==========================
field                  encoder                     decoder
=====================  ==========================  ==========================
layer norm             post-LN (the papers')       pre-LN (``configs/decoder.py``)
training lengths       1–12, one program           1–12, one program
evaluated lengths      1–30 (beyond: 13–30)        1–30 (beyond: 13–30)
steps × batch          1,000 × 64                  1,000 × 64
learning rate          1e-3, 50 warmup steps, cosine to 0
evaluation             32 samples per length, one program (+ greedy decoding: decoder)
randomized positions   drawn from [0, 120) = 4 × the longest evaluated length (Ruoss et
                       al.'s ratio: 2048 for lengths to 500)
=====================  ==========================  ==========================

How the size was chosen (2-core CPU of this project, 2026-12-03, while ~6 other sessions loaded
it: load average 8–13, so the CPU seconds below are upper bounds of an idle machine's):

* Learning. At 600 steps × batch 32 a decoder did not learn copy (teacher-forced in-range
  accuracy 0.51); at 1,500 × 64, rope reached 0.99 on copy and reverse_string in both forms,
  its training accuracy already 0.97–0.99 at step 1,000. 1,000 × 64 with the cosine
  schedule ending there: rope's encoder odds_first 0.85 in range, decoder addition 0.56 (the
  hardest task here; Kazemnejad et al. train far longer), randomized rope 0.91 on
  reverse_string.
* Cost per point (one process pinned to one core, CPU seconds including ~4 s of imports):
  rope encoder on odds_first 66 s, rope decoder on addition with greedy decoding 71 s,
  FLOATER (the slowest to compile) decoder on addition 95 s.
  Compiling is a large share at this size, so the protocol uses one training program
  (``train.num_buckets=1``: four programs cost the decoder point 99 s) and one evaluation
  program, and seed 1 reuses seed 0's compiled programs from ``<root>/.jax_cache``.
* Whole atlas: 452 points today (encoder: (19 schemes + 4 randomized) × 6 tasks × 2 seeds =
  276; decoder: 22 × 4 × 2 = 176) × ~50–70 CPU s ≈ 6–9 CPU hours, i.e. about 3–4.5 hours on
  an idle 2-core machine with two workers sharing the root (each takes the next point that is
  neither done nor locked)::

    python -m experiments.sweep --config=configs/sweeps/atlas.py --root=experiments/atlas &
    python -m experiments.sweep --config=configs/sweeps/atlas.py --root=experiments/atlas

  One worker takes about 1.6× as long (one process keeps ~1.2 cores busy). Lengths were kept
  short (train to 12, test to 30, as Kazemnejad et al.'s 20 → 40 halved) because the step cost
  grows with the padded length and every point pays it 1,000 times.
"""

from __future__ import annotations

import ml_collections

from configs.sweeps import sweep_config
from posenc import sweeps
from posenc.errors import ConfigError

# Two tasks per Chomsky level: R, DCF, CS (Delétang et al. 2023, Table 2's rows).
ENCODER_TASKS = ("even_pairs", "parity_check",            # R (parity: the negative control)
                 "reverse_string", "stack_manipulation",  # DCF
                 "odds_first", "bucket_sort")             # CS
# Kazemnejad et al. 2023's copy, addition and sorting, and one Chomsky task in decoder form.
DECODER_TASKS = ("copy", "addition", "sorting", "reverse_string")
# Schemes that also get randomized positions (Ruoss et al. 2023 report these four).
RANDOMIZED = ("sinusoidal", "rope", "alibi", "t5")

TRAIN_MAX = 12
EVAL_MAX = 30
STEPS = 1000
# Settings of both forms (the encoder's values; decoder points override DECODER's keys).
_SHARED = {
    "smoke": {"model.causal": False, "positions.max_position": 64},
    "default": {"model.causal": False, "task.train_max_length": TRAIN_MAX,
                "train.steps": STEPS, "train.batch_size": 64, "train.warmup_steps": 50,
                "train.num_buckets": 1,
                "eval.max_length": EVAL_MAX, "eval.samples_per_length": 32,
                "eval.batch_size": 32, "eval.num_buckets": 1,
                "positions.max_position": 4 * EVAL_MAX, "checkpoint.every_steps": 500,
                "checkpoint.max_to_keep": 1,
                # the report draws every point; a point's own figures would not be kept
                # (outside the config hash: points made with them stay done)
                "plots": False},
}
# What a decoder point sets on top (its workdir name carries these keys).
DECODER = {"model.causal": True, "model.pre_ln": True, "eval.greedy": True}
RANDOM = {"positions.kind": "randomized"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "default"
  if preset not in _SHARED:
    raise ValueError(f"the atlas has one protocol (default) and a smoke preset for tests; "
                     f"got {preset!r} (use configs/sweeps/chomsky.py:paper for the paper's)")
  c = sweep_config(arg, name="atlas", shared=_SHARED[preset],
                   seeds=2 if preset == "default" else 1)
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
          points.append({"scheme": scheme, "task.name": task, "seed": seed, **RANDOM})
    for task in dec_tasks:
      for scheme in dec_schemes:
        if scheme in chosen:
          points.append({"scheme": scheme, "task.name": task, "seed": seed, **DECODER})
  if not points:
    raise ConfigError("config.sweep.schemes", "no atlas point is left after the schemes and "
                      "tasks filters; widen --config.sweep.schemes / --config.sweep.tasks")
  return points
