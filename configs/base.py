"""The shared config tree; scheme files (``configs/<scheme>.py``) set only what differs.

Presets, chosen with ``--config=configs/<scheme>.py:<preset>``:

* ``smoke``   — seconds; what the tests run.
* default     — a few minutes on a 2-core CPU; shows in-range accuracy and the drop beyond it.
* ``paper``   — the published protocol (Delétang et al. 2023; Ruoss et al. 2023), for accelerators.

Any field can be overridden: ``--config.train.steps=20000``; an unknown key is an error.
"""

from __future__ import annotations

import ml_collections

from posenc import encodings

PRESETS = ("default", "smoke", "paper")


def get_config(arg: str | None = None, *, scheme: str = "sinusoidal",
               **encoding_overrides) -> ml_collections.ConfigDict:
  preset = arg or "default"
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} "
                     f"(e.g. --config=configs/{scheme}.py:smoke)")
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.seed = 0
  c.num_seeds = 1
  # How seeds share the program: "vmap" (accelerators), "map" (one after another), "shard"
  # (split over the devices: on a CPU, one device per core), or "auto" (shard on a CPU with
  # the cores to split over, else by backend); see posenc.seeds.seed_loop.
  c.seed_loop = "auto"
  c.workdir = ""  # empty: runs/<scheme>-<task>-<preset>-seed<seed>-<config hash>
  c.plots = True    # draw plots/*.png at the end of a run (results.json is written either way)

  c.task = ml_collections.ConfigDict()
  c.task.name = "reverse_string"
  c.task.train_min_length = 1
  c.task.train_max_length = 40

  c.model = ml_collections.ConfigDict()
  c.model.causal = False
  c.model.d_model = 64
  c.model.num_heads = 8
  c.model.num_layers = 5
  c.model.d_ff = 256
  c.model.dropout = 0.1
  c.model.pre_ln = False
  c.model.embed_scale = True
  c.model.activation = "relu"
  c.model.dtype = "float32"

  c.encoding = encodings.default_config(scheme, **encoding_overrides)

  c.positions = ml_collections.ConfigDict()
  c.positions.kind = "contiguous"   # or "randomized"
  c.positions.max_position = 2048   # randomized positions are drawn from [0, max_position)
  c.positions.per_example = True    # randomized: one draw per sequence (False: per batch)
  c.positions.offset = 0
  c.positions.random_offset = False
  c.positions.eval = "same"         # "contiguous": evaluation does not sample

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1_000_000
  c.train.batch_size = 128
  c.train.learning_rate = 1e-4
  c.train.schedule = "constant"     # or "cosine", or "rsqrt" (lr * sqrt(warmup / step) after warm-up)
  c.train.warmup_steps = 0
  c.train.weight_decay = 0.0
  c.train.grad_clip = 1.0
  c.train.log_every = 100
  # Training programs: one per bucket of training lengths, each batch padded only to its
  # bucket (posenc.data.train_buckets); 1: one program padded to the longest length; 0: as
  # many as finish the run soonest, compiling included (posenc.setup.auto_train_buckets: the
  # paper preset gets one per training length). The same lengths, examples, positions and
  # dropout masks whatever the choice.
  c.train.num_buckets = 0
  # Whose step lengths the seeds of one run draw: -1, each seed its own (run k of num_seeds
  # is exactly the single run with seed seed+k); s >= 0, every seed draws seed s's lengths,
  # so seeds in one program pad as one run does (their examples, dropout and initialisation
  # stay their own). Seed k then equals the single run with seed k and the same length_seed.
  c.train.length_seed = -1

  # Training to a criterion (posenc.criterion): every `every` steps, score the longest
  # `top_fraction` of the training lengths on a held-out set; the run has *learned* once the
  # score reaches `threshold`, and with `stop` it ends there (else at train.steps, the cap).
  c.criterion = ml_collections.ConfigDict()
  c.criterion.every = 0               # 0: no criterion (train for train.steps)
  c.criterion.threshold = 0.95
  c.criterion.top_fraction = 0.25     # the longest quarter of the training lengths
  c.criterion.samples_per_length = 128
  c.criterion.metric = "auto"         # auto: exact match where eval.greedy decodes, else accuracy
  c.criterion.stop = True             # False: train to the cap and only record the step

  c.eval = ml_collections.ConfigDict()
  c.eval.min_length = 1
  c.eval.max_length = 500
  c.eval.samples_per_length = 512
  c.eval.batch_size = 128
  c.eval.num_buckets = 8
  # Rows per forward pass inside an evaluation program (a divisor of the evaluation batch);
  # 0: automatic (CPU: passes of about 1024 tokens, which keep long sequences' attention in
  # cache; accelerators: the whole batch). Scores do not depend on it.
  c.eval.micro_batch = 0
  # Decoders: also decode each answer greedily (key/value cache) and report exact match.
  c.eval.greedy = False
  # The evaluation set's seed: -1 draws it from the run's seed; a fixed value gives every
  # seed (and every scheme) of a task the same evaluation samples.
  c.eval.seed = -1

  # Warm start: copy parameters (by path, shapes must match) from another run's checkpoint,
  # e.g. FLOATER from a sinusoidal run, or a hierarchical table from a learned run.
  # With train.steps=0 this re-evaluates a trained run under new evaluation settings.
  c.init = ml_collections.ConfigDict()
  c.init.from_workdir = ""
  c.init.step = 0  # 0: the latest checkpoint there

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 10_000
  c.checkpoint.max_to_keep = 3

  if preset == "default":
    # Sized for a 2-core CPU: a few minutes, in-range accuracy high, extrapolation visible.
    c.task.train_max_length = 16
    c.model.d_model = 64
    c.model.num_heads = 4
    c.model.num_layers = 2
    c.model.d_ff = 128
    c.model.dropout = 0.0
    c.train.steps = 3000
    c.train.batch_size = 64
    c.train.learning_rate = 1e-3
    c.train.schedule = "cosine"
    c.train.warmup_steps = 100
    c.train.num_buckets = 4  # the README's default-preset numbers were measured with 4
    c.eval.max_length = 64
    c.eval.samples_per_length = 128
    c.eval.batch_size = 128
    c.eval.num_buckets = 4
    c.checkpoint.every_steps = 1000
    # Train to the criterion: stop once lengths 13-16 score >= 0.95 (checked every 250
    # steps), else at the 3000-step cap.
    c.criterion.every = 250
  elif preset == "smoke":
    c.task.train_max_length = 6
    c.model.d_model = 16
    c.model.num_heads = 2
    c.model.num_layers = 1
    c.model.d_ff = 32
    c.model.dropout = 0.0
    c.train.steps = 4
    c.train.batch_size = 4
    c.train.learning_rate = 1e-3
    c.train.log_every = 2
    c.train.num_buckets = 1  # one compile: tests stay fast (tests/test_train_buckets.py sets more)
    c.eval.max_length = 10
    c.eval.samples_per_length = 4
    c.eval.batch_size = 4
    c.eval.num_buckets = 1  # one evaluation program (tests/test_eval_invariance.py sets more)
    c.plots = False  # ~1 s of matplotlib per run; the tests that read plots turn them on
    c.checkpoint.every_steps = 2
  return c
