"""Where the time goes: every scheme, one process, one run, so ratios are fair.

  python scripts/benchmark.py                       # every scheme, default Chomsky preset
  python scripts/benchmark.py --schemes=sinusoidal,floater,alibi --steps=30 --out=bench.json
  python scripts/benchmark.py --atlas --atlas_before        # the atlas protocol, whole runs
  python scripts/benchmark.py --buckets=paper --buckets_only  # the paper preset's step

For each scheme (encoder mode where valid, else the causal decoder) on the default preset
of ``configs/<scheme>.py`` (reverse_string): compile time of the training step, training
steps/s and tokens/s, evaluation time over lengths 41..500 and the number of programs it
compiled, peak memory, and model FLOP utilisation (XLA's FLOP count of the step over its
time, against this machine's dense-matmul rate measured in the same run). Ratios against
sinusoidal are what the targets are stated in: after the per-scheme pass, every training
step is timed again in ``--rounds`` rounds in which the schemes take turns, and the table
reports the medians, so that load on a shared machine falls on all schemes alike
(``--eval_rounds`` does the same for the evaluations, each from empty compilation caches;
the table splits off the seconds an evaluation spends tracing and compiling;
``--eval_calls`` times the compiled evaluation programs call by call, the schemes taking
turns on every call, for a per-sample ratio that noise between whole evaluations hides). Then
``num_seeds = 8`` against 8 single-seed runs (``--seed_runs``: whole ``experiments.run``
processes). Prints Markdown tables and writes JSON (``--out``; what is measured so far goes to
``<out>.partial`` as the run goes, and replaces ``--out`` when the run completes).

Host memory (``posenc/host_memory.py``) is set once per process, as ``experiments.run`` would
set it for ``--preset`` (or the ``--buckets`` preset with ``--buckets_only``); the LM rows of a
full run share that setting, so they time asynchronous dispatch where a lone LM run would not.

This is a script, not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import experiments  # noqa: E402,F401 — before equinox: what experiments.run sets (EQX_ON_ERROR)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import logging  # noqa: E402

from posenc import data as data_lib, dropout, encodings, host_memory, model, train  # noqa: E402
from posenc import seeds as seeds_lib, setup as setup_lib  # noqa: E402

logging.set_verbosity(logging.ERROR)
# Compile times are part of what is measured: never read programs from a persistent cache
# (JAX_COMPILATION_CACHE_DIR in the environment, as the README suggests for runs, included).
jax.config.update("jax_enable_compilation_cache", False)

_COMPILES = []
_COMPILE_S = [0.0]  # seconds spent tracing, lowering and compiling programs, all of them
_STEPS: dict[str, dict] = {}  # scheme -> its compiled training step, for the interleaved timing
_EVALS: dict[str, tuple] = {}  # scheme -> (setup, params, eval key), for the interleaved evaluations
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def _on_duration(name: str, secs: float, **kw) -> None:
  if name == "/jax/core/compile/backend_compile_duration":
    _COMPILES.append(secs)
  if name in _COMPILE_EVENTS:
    _COMPILE_S[0] += secs


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def matmul_rate(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
  """Measured dense ``n x n`` matmul FLOP/s of this device in ``dtype`` (float32 at the
  backend's default precision: on NVIDIA GPUs from Ampere on, XLA may use TF32 for it)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x: (x @ a).astype(dtype))
  x = f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    x = f(x)
  x.block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def peak_memory_mb() -> float:
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2 ** 20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process RSS (CPU)


def config_for(scheme: str, preset: str | None):
  c = importlib.import_module(f"configs.{scheme}").get_config(preset)
  return c


def time_training(s, args) -> dict:
  """Compiles the training step of setup ``s`` and times it: compile s, s/step, XLA FLOPs."""
  keys = seeds_lib.root_keys(0)
  state = train.init_state(s, keys["init"])
  t = time.perf_counter()
  compiled = jax.jit(train.make_train_step(s), donate_argnums=0).lower(state, keys["train"]).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  for _ in range(args.warmup):
    state, _ = compiled(state, keys["train"])
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(args.steps):
    state, _ = compiled(state, keys["train"])
  jax.block_until_ready(state)
  return {"compile_s": compile_s, "step_s": (time.perf_counter() - t) / args.steps,
          "flops": flops, "state": state, "keys": keys, "compiled": compiled}


def bench_lm(scheme: str, args, rate: float) -> dict:
  """Training-step speed and MFU of ``configs/lm/<scheme>.py``'s default preset."""
  c = importlib.import_module(f"configs.lm.{scheme}").get_config(args.preset)
  s = setup_lib.setup(c)
  r = time_training(s, args)
  step_s, flops = r["step_s"], r["flops"]
  return {"scheme": scheme, "step_ms": 1e3 * step_s,
          "tokens_per_s": c.train.batch_size * s.train_padded / step_s,
          "step_gflop": flops / 1e9, "mfu": (flops / step_s) / rate if flops else None}


def bench_scheme(scheme: str, args, rate: float) -> dict:
  c = config_for(scheme, args.preset)
  with c.unlocked():
    c.eval.min_length, c.eval.max_length = args.eval_min, args.eval_max
    c.eval.samples_per_length = args.eval_samples
    c.eval.batch_size = args.eval_samples
    if "max_len" in c.encoding:  # learned tables: give them rows for the evaluated lengths
      c.encoding.max_len = max(c.encoding.max_len, 2 * args.eval_max + 8)
  s = setup_lib.setup(c)
  r = time_training(s, args)
  compile_s, step_s, flops, state, keys = (r[k] for k in ("compile_s", "step_s", "flops", "state", "keys"))
  _STEPS[scheme] = {"compiled": r["compiled"], "keys": keys, "tokens": c.train.batch_size * s.train_padded,
                    "flops": flops, "state": state}  # the step's latest state (not donated yet)
  tokens = c.train.batch_size * s.train_padded

  n0 = len(_COMPILES)
  eval_s, eval_compile_s = time_evaluation(s, state["params"], keys["eval"])
  eval_programs = len(_COMPILES) - n0
  # A copy: the interleaved step timing donates (deletes) the state's own buffers.
  _EVALS[scheme] = (s, jax.tree_util.tree_map(jnp.copy, state["params"]), keys["eval"])
  row = {
      "scheme": scheme, "mode": "decoder" if s.causal else "encoder",
      "compile_s": compile_s, "step_ms": 1e3 * step_s, "steps_per_s": 1 / step_s,
      "tokens_per_s": tokens / step_s, "eval_s": eval_s, "eval_compile_s": eval_compile_s,
      "eval_programs": eval_programs,
      "eval_buckets": len(s.eval_buckets), "peak_mem_mb": peak_memory_mb(),
      "step_gflop": flops / 1e9, "mfu": (flops / step_s) / rate if flops else None,
  }
  enc_module = importlib.import_module(f"posenc.encodings.{scheme}")
  if hasattr(enc_module, "solver_stats"):
    try:
      row["ode_steps"] = enc_module.solver_stats(state["params"], s)
    except Exception as e:  # noqa: BLE001 — a stat we can live without
      row["ode_steps"] = f"n/a ({type(e).__name__})"
  return row


def time_evaluation(s, params, key) -> tuple[float, float]:
  """Evaluates as a run does (every program traced and compiled, then run), timed: returns
  (wall seconds, of which seconds spent tracing, lowering and compiling). The compilation
  share is a fixed cost per run; the rest grows with ``eval.samples_per_length``."""
  c0 = _COMPILE_S[0]
  t = time.perf_counter()
  train.evaluate(s, params, key, log=None)
  return time.perf_counter() - t, _COMPILE_S[0] - c0


def interleaved_evaluations(rows: list[dict], rounds: int) -> None:
  """Times every scheme's evaluation again in ``rounds`` rounds, the schemes taking turns,
  each from empty compilation caches (as a fresh run starts), and puts the medians in
  ``rows``. One evaluation of 41..500 takes half a minute, and a shared machine's load
  moves it by several percent between two measurements; medians of interleaved rounds
  are what eval ratios should be read from. The order rotates by one scheme per round, so
  no scheme always runs first or last."""
  samples = {name: [] for name in _EVALS}
  failed: dict[str, str] = {}
  names = list(_EVALS)
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      s, params, key = _EVALS[name]
      if name in failed:
        continue
      jax.clear_caches()  # the compiled training steps are kept (ahead-of-time objects)
      try:
        samples[name].append(time_evaluation(s, params, key))
      except Exception as e:  # noqa: BLE001 — the other schemes' rounds still count
        failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        print(f"  evaluation round {r + 1}/{rounds}: {name} failed ({failed[name]})", flush=True)
        continue
      t, c = samples[name][-1]
      print(f"  evaluation round {r + 1}/{rounds}: {name} {t:.1f} s ({c:.1f} s compiling)",
            flush=True)
  for row in rows:
    got = samples.get(row["scheme"])
    if row["scheme"] in failed:  # keep the first pass's numbers, say why there are no rounds
      row["eval_rounds_error"] = failed[row["scheme"]]
      continue
    if not got:
      continue
    row.update({"eval_s": statistics.median(t for t, _ in got),
                "eval_compile_s": statistics.median(c for _, c in got),
                "eval_s_rounds": [round(t, 2) for t, _ in got],
                "eval_compile_s_rounds": [round(c, 2) for _, c in got]})


def interleaved_eval_calls(rows: list[dict], rounds: int) -> None:
  """Times the evaluation's compiled programs call by call, the schemes taking turns on every
  call, and puts per-call totals and their ratio to sinusoidal in ``rows``.

  Every bucket's program is compiled first (not timed). Then, in each round, call ``j`` of
  every scheme (one length and chunk: the same lengths and samples for all of them) runs
  back to back, each waited for, in an order that rotates with ``j``. What the machine does
  meanwhile falls on all schemes within a fraction of a second, so the ratio is what a
  whole evaluation's rounds cannot resolve: the per-sample cost with compiling set aside,
  the part that grows with ``eval.samples_per_length``.
  """
  calls: dict[str, list] = {}
  failed: dict[str, str] = {}
  for name, (s, params, key) in _EVALS.items():
    try:
      progs = list(train.evaluation_programs(s, params, key))
      for prog in progs:  # compile every bucket's program before anything is timed
        jax.block_until_ready(prog.score(*prog.calls[0][1]))
      calls[name] = [(prog.score, args) for prog in progs for _, args in prog.calls]
    except Exception as e:  # noqa: BLE001 — the other schemes still count
      failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
  # Call j must be the same work for every scheme: one with a different evaluation (another
  # number of calls than the baseline's) is left out with the reason, not the whole run.
  ref = len(calls.get("sinusoidal") or next(iter(calls.values()), []))
  for name, c in list(calls.items()):
    if len(c) != ref:
      failed[name] = f"{len(c)} evaluation calls against {ref}: not the same evaluation"
      del calls[name]
  n = ref
  totals: dict[str, list[float]] = {name: [] for name in calls}
  names = list(calls)
  for r in range(rounds):
    spent = dict.fromkeys(names, 0.0)
    for j in range(n):
      turn = j % len(names)
      for name in names[turn:] + names[:turn]:
        if name in failed:
          continue
        score, args = calls[name][j]
        t = time.perf_counter()
        try:
          jax.block_until_ready(score(*args))
        except Exception as e:  # noqa: BLE001
          failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        spent[name] += time.perf_counter() - t
    for name in names:
      if name not in failed:
        totals[name].append(spent[name])
    done = ", ".join(f"{name} {spent[name]:.2f} s" for name in names if name not in failed)
    print(f"  evaluation calls, round {r + 1}/{rounds}: {done}", flush=True)
  base = totals.get("sinusoidal") if "sinusoidal" not in failed else None
  for row in rows:
    name = row["scheme"]
    if name in failed:
      row["eval_calls_error"] = failed[name]
      continue
    got = totals.get(name)
    if not got:
      continue
    row.update({"eval_calls_s": statistics.median(got), "eval_calls_s_rounds": [round(t, 5) for t in got]})
    if base:
      ratios = [t / b for t, b in zip(got, base)]
      row.update({"eval_calls_ratio": statistics.median(ratios),
                  "eval_calls_ratio_rounds": [round(x, 4) for x in ratios]})


def interleaved_steps(rows: list[dict], args, rate: float) -> None:
  """Re-times every scheme's training step in ``args.rounds`` rounds, the schemes taking
  turns within each round, and puts the median in ``rows`` (step ms, tokens/s, MFU).

  Timed one after another, a ratio between two schemes also measures whatever else the
  machine did in between; taking turns spreads that over all of them.
  """
  samples = {name: [] for name in _STEPS}
  for _ in range(args.rounds):
    for name, st in _STEPS.items():
      state = st.pop("state", None)
      if state is None:
        continue
      for _ in range(args.warmup):
        state, _ = st["compiled"](state, st["keys"]["train"])
      jax.block_until_ready(state)
      t = time.perf_counter()
      for _ in range(args.steps):
        state, _ = st["compiled"](state, st["keys"]["train"])
      jax.block_until_ready(state)
      samples[name].append((time.perf_counter() - t) / args.steps)
      st["state"] = state
  for row in rows:
    got = samples.get(row["scheme"])
    if not got:
      continue
    step_s = statistics.median(got)
    st = _STEPS[row["scheme"]]
    row.update({"step_ms": 1e3 * step_s, "steps_per_s": 1 / step_s,
                "tokens_per_s": st["tokens"] / step_s,
                "mfu": (st["flops"] / step_s) / rate if st["flops"] else None,
                "step_ms_rounds": [round(1e3 * x, 2) for x in got]})


def seed_step_worker(args) -> None:
  """In a fresh process: time one ``num_seeds``-seed training step as ``experiments.run``
  would run it (CPU split into one device per core, ``seed_loop=auto``); prints JSON."""
  from posenc import parallel
  num_seeds = args.seed_step_worker
  devices = parallel.provide_cpu_devices(num_seeds)  # before anything starts JAX
  c = config_for("sinusoidal", args.preset)
  with c.unlocked():
    c.num_seeds = num_seeds
  s = setup_lib.setup(c)
  how = seeds_lib.seed_loop(c)
  keys = seeds_lib.root_keys(0, num_seeds)
  state = jax.jit(seeds_lib.seeded(lambda k: train.init_state(s, k), num_seeds, how))(keys["init"])
  step = jax.jit(seeds_lib.seeded(train.make_train_step(s), num_seeds, how), donate_argnums=0)
  for _ in range(max(1, args.warmup)):
    state, _ = step(state, keys["train"])
  jax.block_until_ready(state)
  times = []
  for _ in range(args.rounds):
    t = time.perf_counter()
    for _ in range(args.steps):
      state, _ = step(state, keys["train"])
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t) / args.steps)
  print(json.dumps({"devices": devices or jax.device_count(), "seed_loop": how,
                    "s_per_step": statistics.median(times)}))


def bench_seeds(args, num_seeds: int = 8, rate: float = 0.0) -> dict:
  """``num_seeds`` seeds in one program against one after another.

  Per step, in this process (one device): ``num_seeds`` single-seed steps against one vmapped
  and one mapped ``num_seeds``-seed step; and in a fresh process, the step as
  ``experiments.run`` runs it on this machine (``seed_loop=auto``: on a CPU, seeds sharded
  over one device per core). With ``--seed_runs``, whole default-preset runs as a researcher
  would start them: ``num_seeds`` times ``python -m experiments.run --config.seed=k`` against
  one ``python -m experiments.run --config.num_seeds=<num_seeds>``, wall clock, process
  start-up, compilation, training, evaluation and writing included.

  With the dense-matmul ``rate`` (FLOP/s): the 8-seed step's model FLOP utilisation as
  ``experiments.run`` runs it, the utilisation a 3x speedup per step would need, and the
  speedup if every FLOP of the 8 seeds ran at the matmul rate (the ceiling on this machine).
  """
  c = config_for("sinusoidal", args.preset)
  times, flops = {}, 0.0
  for label, s_count, how in (("sequential", 1, "vmap"), ("vmapped", num_seeds, "vmap"),
                              ("mapped", num_seeds, "map")):
    with c.unlocked():
      c.num_seeds = s_count
    s = setup_lib.setup(c)
    keys = seeds_lib.root_keys(0, s_count)
    state = seeds_lib.seed_by_seed(lambda k: train.init_state(s, k), s_count, how)(keys["init"])
    step = jax.jit(seeds_lib.seeded(train.make_train_step(s), s_count, how), donate_argnums=0)
    if s_count == 1:  # XLA's FLOP count of one seed's step
      cost = step.lower(state, keys["train"]).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      flops = float(cost.get("flops", 0.0)) if cost else 0.0
    state, _ = step(state, keys["train"])
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(args.steps):
      state, _ = step(state, keys["train"])
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - t) / args.steps
    times[label] = per_step * (num_seeds if s_count == 1 else 1)
  cmd = [sys.executable, os.path.abspath(__file__), f"--seed_step_worker={num_seeds}",
         f"--steps={args.steps}", f"--warmup={args.warmup}", f"--rounds={args.rounds}"]
  if args.preset:
    cmd.append(f"--preset={args.preset}")
  worker = subprocess.run(cmd, capture_output=True, text=True, cwd=_ROOT)
  if worker.returncode:
    raise RuntimeError(f"seed step worker failed: {worker.stderr[-1000:]}")
  auto = json.loads(worker.stdout.strip().splitlines()[-1])
  out = {"num_seeds": num_seeds, "sequential_s_per_step": times["sequential"],
         "vmapped_s_per_step": times["vmapped"], "mapped_s_per_step": times["mapped"],
         "speedup": times["sequential"] / times["vmapped"],
         "speedup_mapped": times["sequential"] / times["mapped"],
         "auto_seed_loop": auto["seed_loop"], "auto_devices": auto["devices"],
         "auto_s_per_step": auto["s_per_step"],
         "speedup_auto": times["sequential"] / auto["s_per_step"]}
  if flops and rate:
    work_s = num_seeds * flops / rate  # all seeds' FLOPs at the dense-matmul rate
    out.update({"step_gflop": flops / 1e9, "mfu_auto": work_s / auto["s_per_step"],
                "mfu_needed_3x": work_s / (times["sequential"] / 3),
                "ceiling_speedup": times["sequential"] / work_s})
  if args.seed_runs:
    import tempfile
    config_arg = "--config=configs/sinusoidal.py" + (f":{args.preset}" if args.preset else "")
    with tempfile.TemporaryDirectory() as tmp:
      def run(name, *flags):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "experiments.run", config_arg,
                               f"--workdir={os.path.join(tmp, name)}", *flags],
                              capture_output=True, text=True, cwd=_ROOT)
        if done.returncode:
          raise RuntimeError(f"run {name} failed: {done.stderr[-1000:]}")
        return time.perf_counter() - t
      sequential = [run(f"one{k}", f"--config.seed={k}") for k in range(num_seeds)]
      together = run("all", f"--config.num_seeds={num_seeds}")
    out.update({"sequential_runs_s": sum(sequential), "single_run_s": sequential,
                "one_run_s": together, "run_speedup": sum(sequential) / together})
  return out


def bench_atlas(args) -> dict:
  """The atlas protocol as a researcher runs it, whole processes, wall clock: ``--atlas_seeds``
  single-seed runs (``--config.num_seeds=1 --config.seed=k``) one after another against one
  run of all of them (``--config.num_seeds``), each ``--atlas_steps`` steps of sweep point
  ``--atlas_point`` of ``configs/sweeps/atlas.py`` with the criterion off (every run trains
  the same steps), process start-up, compiling, training, evaluation and writing included. The
  target (issue 40): the one run at least 3.5x the seed-points per hour of the single runs.
  ``--atlas_before`` times the first v2 protocol too (one program padded to the rounded
  longest length, ``train.num_buckets = 1``, each seed drawing its own lengths)."""
  import tempfile
  from configs.sweeps import atlas  # noqa: PLC0415
  S = args.atlas_seeds or atlas.SEEDS
  variants = [("now", [])]
  if args.atlas_before:
    variants.append(("before", ["--config.train.num_buckets=1", "--config.train.length_seed=-1"]))
  out = {"point": args.atlas_point, "steps": args.atlas_steps, "seeds": S, "rows": []}
  with tempfile.TemporaryDirectory() as tmp:
    def run(name, *flags):
      t = time.perf_counter()
      done = subprocess.run([sys.executable, "-m", "experiments.run",
                             "--config=configs/sweeps/atlas.py:default",
                             f"--sweep_index={args.atlas_point}",
                             f"--config.train.steps={args.atlas_steps}",
                             "--config.criterion.every=0",
                             f"--config.workdir={os.path.join(tmp, name)}", *flags],
                            capture_output=True, text=True, cwd=_ROOT)
      if done.returncode:
        raise RuntimeError(f"run {name} failed: {done.stderr[-1000:]}")
      compiled = [l for l in done.stdout.splitlines() if l.startswith("compiled")]
      return time.perf_counter() - t, (compiled[0] if compiled else "")
    for label, flags in variants:
      singles = [run(f"{label}-one{k}", "--config.num_seeds=1", f"--config.seed={k}", *flags)
                 for k in range(S)]
      together, line = run(f"{label}-all", f"--config.num_seeds={S}", *flags)
      row = {"protocol": label, "single_runs_s": [t for t, _ in singles],
             "single_total_s": sum(t for t, _ in singles), "one_run_s": together,
             "ratio": sum(t for t, _ in singles) / together,
             "single_compiled": singles[0][1], "one_run_compiled": line}
      out["rows"].append(row)
      print(json.dumps(row), flush=True)
  lines = [f"| protocol | {S} single-seed runs, s | one {S}-seed run, s | seed-points/hour, one run "
           "÷ single runs |", "|---|---|---|---|"]
  for r in out["rows"]:
    lines.append(f"| {r['protocol']} | {r['single_total_s']:.1f} | {r['one_run_s']:.1f} | "
                 f"{r['ratio']:.2f}× |")
  if len(out["rows"]) == 2:
    now, before = out["rows"]
    lines.append(f"\n{S} seeds in one run, now against before: "
                 f"{before['one_run_s'] / now['one_run_s']:.2f}× the seed-points per hour")
  out["markdown"] = "\n".join(lines)
  return out


def bench_buckets(preset: str, args) -> dict:
  """Training length buckets on ``configs/sinusoidal.py:<preset>``: the step of every bucket
  program (``config.train.num_buckets``, or ``--num_buckets``) and of the one program of
  ``num_buckets = 1``, timed in ``--rounds`` interleaved rounds (medians), and the step
  averaged over the length distribution (lengths uniform: bucket ``b`` runs a share
  ``|b| / n`` of the steps). "before" is the one program as it was before buckets: flax's
  own dropout masks (``posenc.dropout.FUSED = False``: the same masks, drawn slowly) and
  softmax before the value product (``posenc.model.NORMALIZE_AFTER_VALUES = False``),
  the reference the targets are stated against. Also: seconds to compile all
  bucket programs the way a run does (side by side, ``train.compile_programs``)."""
  import numpy as np  # noqa: PLC0415

  c = config_for("sinusoidal", preset)
  k = args.num_buckets or c.train.num_buckets
  with c.unlocked():
    c.train.num_buckets = k
  s = setup_lib.setup(c)
  plan = s.train_buckets()
  # the plan the targets are stated against (issue 40: today's 4 buckets), timed alongside
  other = (data_lib.train_buckets(s.task, s.train_lengths, args.compare_buckets, multiple=1)
           if args.compare_buckets else [])
  other = [] if other == plan else other
  keys = seeds_lib.root_keys(0)
  state = train.init_state(s, keys["init"])
  fresh = lambda: jax.tree_util.tree_map(jnp.copy, state)
  programs: dict[str, list] = {}  # name -> [compiled, state, extra args, padded length]
  for name, new in (("before", False), ("one", True)):
    dropout.FUSED = model.NORMALIZE_AFTER_VALUES = new
    try:
      compiled = jax.jit(train.make_train_step(s), donate_argnums=0).lower(
          state, keys["train"]).compile()
    finally:
      dropout.FUSED = model.NORMALIZE_AFTER_VALUES = True
    programs[name] = [compiled, fresh(), (), s.train_padded]
  t = time.perf_counter()
  lowerings = [lambda b=b, g=g: jax.jit(train.make_train_step(s, b), donate_argnums=0).lower(
      state, keys["train"], np.int32(s.train_lengths.index(g[-1]))) for b, (g, _) in enumerate(plan)]
  compiled = train.compile_programs(lowerings)
  compile_s = time.perf_counter() - t
  for b, ((g, padded), comp) in enumerate(zip(plan, compiled)):
    programs[f"bucket{b}"] = [comp, fresh(), (np.int32(s.train_lengths.index(g[-1])),), padded]
  if other:
    with c.unlocked():
      c.train.num_buckets = args.compare_buckets
    s_other = setup_lib.setup(c)
    for b, (g, padded) in enumerate(other):
      comp = jax.jit(train.make_train_step(s_other, b), donate_argnums=0).lower(
          state, keys["train"], np.int32(s.train_lengths.index(g[-1]))).compile()
      programs[f"other{b}"] = [comp, fresh(), (np.int32(s.train_lengths.index(g[-1])),), padded]
  samples = {name: [] for name in programs}
  names = list(programs)
  # "cpu": this process's CPU seconds (all threads) per step: on a machine shared with other
  # jobs, time slicing stretches wall time but not the work done; cache contention still shows.
  clock = time.process_time if args.buckets_clock == "cpu" else time.perf_counter
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      comp, st, extra, _ = programs[name]
      for _ in range(args.warmup if r == 0 else 0):
        st, _ = comp(st, keys["train"], *extra)
      jax.block_until_ready(st)
      t = clock()
      for _ in range(args.steps):
        st, _ = comp(st, keys["train"], *extra)
      jax.block_until_ready(st)
      samples[name].append((clock() - t) / args.steps)
      programs[name][1] = st
    print(f"  buckets round {r + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f})", flush=True)
  ms = {name: 1e3 * statistics.median(v) for name, v in samples.items()}
  n = len(s.train_lengths)
  bucket_ms = [ms[f"bucket{b}"] for b in range(len(plan))]
  avg_ms = sum(len(g) / n * t for (g, _), t in zip(plan, bucket_ms))
  compared = {}
  if other:
    other_ms = [ms[f"other{b}"] for b in range(len(other))]
    other_avg = sum(len(g) / n * t for (g, _), t in zip(other, other_ms))
    compared = {"compare_buckets": args.compare_buckets, "compare_avg_ms": other_avg,
                "avg_vs_compare": avg_ms / other_avg,
                "compare": [{"lengths": [g[0], g[-1]], "padded": p, "step_ms": t}
                            for (g, p), t in zip(other, other_ms)]}
  return {**compared,
      "preset": preset, "num_buckets": k, "lengths": [s.train_lengths[0], s.train_lengths[-1]],
      "buckets": [{"lengths": [g[0], g[-1]], "padded": p, "step_ms": t, "share": len(g) / n}
                  for (g, p), t in zip(plan, bucket_ms)],
      "padded": s.train_padded, "before_ms": ms["before"], "one_ms": ms["one"],
      "avg_ms": avg_ms, "longest_ms": bucket_ms[-1],
      "avg_vs_before": avg_ms / ms["before"], "longest_vs_before": bucket_ms[-1] / ms["before"],
      "one_vs_before": ms["one"] / ms["before"], "compile_all_s": compile_s,
      "rounds_ms": {name: [1e3 * x for x in v] for name, v in samples.items()},
      "load": os.getloadavg()[0], "clock": args.buckets_clock,
  }


def system_buckets(args) -> dict:
  """The same --buckets_only timing in a child process with glibc's default allocator
  (``POSENC_MALLOC=system``): how the steps ran before ``posenc/host_memory.py``. The host
  memory settings are per process, so "before" cannot be timed both ways in one process; the
  child runs right after this one, on the same machine."""
  import tempfile  # noqa: PLC0415
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "system.json")
    cmd = [sys.executable, os.path.abspath(__file__), f"--buckets={args.buckets or 'paper'}",
           "--buckets_only", "--buckets_no_child", f"--steps={args.steps}",
           f"--warmup={args.warmup}", f"--rounds={args.rounds}",
           f"--num_buckets={args.num_buckets}", f"--buckets_clock={args.buckets_clock}",
           f"--compare_buckets={args.compare_buckets}",
           f"--out={out}"]
    print("  buckets again with glibc's default allocator (POSENC_MALLOC=system)", flush=True)
    subprocess.run(cmd, env={**os.environ, "POSENC_MALLOC": "system"}, check=True,
                   stdout=subprocess.DEVNULL)
    with open(out) as f:
      return json.load(f)["buckets"]


def buckets_markdown(b: dict) -> str:
  lines = [f"Training step of configs/sinusoidal.py:{b['preset']} (lengths {b['lengths'][0]}–"
           f"{b['lengths'][1]} uniform), medians of interleaved rounds ({b['clock']} time; load "
           f"{b['load']:.1f}):", "",
           "| program | padded | step ms | × before |", "|---|---|---|---|",
           f"| before: num_buckets=1, flax dropout, softmax first | {b['padded']} | "
           f"{b['before_ms']:.1f} | 1.00 |",
           f"| num_buckets=1 | {b['padded']} | {b['one_ms']:.1f} | {b['one_vs_before']:.2f} |"]
  for i, r in enumerate(b["buckets"]):
    lines.append(f"| bucket {i}: lengths {r['lengths'][0]}–{r['lengths'][1]} | {r['padded']} | "
                 f"{r['step_ms']:.1f} | {r['step_ms'] / b['before_ms']:.2f} |")
  lines += ["", f"num_buckets={b['num_buckets']}: step averaged over the length distribution "
            f"{b['avg_ms']:.1f} ms ({b['avg_vs_before']:.2f}x before; num_buckets=1: "
            f"{b['one_vs_before']:.2f}x), at the longest length {b['longest_ms']:.1f} ms "
            f"({b['longest_vs_before']:.2f}x); all {len(b['buckets'])} programs compiled in "
            f"{b['compile_all_s']:.1f} s"]
  if "compare_avg_ms" in b:
    lines += ["", f"against num_buckets={b['compare_buckets']} (its {len(b['compare'])} programs "
              f"timed in the same rounds): averaged {b['compare_avg_ms']:.1f} ms; "
              f"num_buckets={b['num_buckets']} is **{b['avg_vs_compare']:.2f}x** of it"]
  if "system" in b:
    g = b["system"]
    lines += ["", f"glibc's default allocator (POSENC_MALLOC=system, a child process right after): "
              f"before {g['before_ms']:.1f} ms, num_buckets=1 {g['one_ms']:.1f} ms, averaged "
              f"{g['avg_ms']:.1f} ms, longest {g['longest_ms']:.1f} ms, compiled in "
              f"{g['compile_all_s']:.1f} s. This run against that before (the code before "
              f"buckets, as it ran): averaged {b['avg_ms'] / g['before_ms']:.2f}x, longest "
              f"{b['longest_ms'] / g['before_ms']:.2f}x, num_buckets=1 "
              f"{b['one_ms'] / g['before_ms']:.2f}x"]
  return "\n".join(lines)


def markdown(rows: list[dict], base: dict | None, eval_range: str = "41–500") -> str:
  head = (f"| scheme | mode | compile s | step ms | × sinusoidal | tokens/s | eval {eval_range} s | "
          "of which compiling | eval × sin. | per call × sin. | eval programs | peak MB | MFU |")
  lines = [head, "|---" * 13 + "|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['scheme']} | error: {r['error']} |" + " |" * 11)
      continue
    ratio = r["step_ms"] / base["step_ms"] if base else float("nan")
    eratio = r["eval_s"] / base["eval_s"] if base else float("nan")
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    per_call = f"{r['eval_calls_ratio']:.3f}" if "eval_calls_ratio" in r else "–"
    lines.append(f"| {r['scheme']} | {r['mode']} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | {ratio:.2f} | "
                 f"{r['tokens_per_s']:,.0f} | {r['eval_s']:.1f} | {r['eval_compile_s']:.1f} | {eratio:.2f} | "
                 f"{per_call} | "
                 f"{r['eval_programs']} | "
                 f"{r['peak_mem_mb']:.0f} | {mfu} |")
  return "\n".join(lines)


def save_partial(out: dict, path: str) -> None:
  """Writes what has been measured so far to ``<path>.partial`` (whole, via a temporary file),
  so a benchmark stopped half an hour in keeps its numbers; ``path`` itself, perhaps an earlier
  run's, is replaced only when the benchmark completes."""
  tmp = path + ".partial.tmp"
  with open(tmp, "w") as f:
    json.dump(out, f, indent=2)
  os.replace(tmp, path + ".partial")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--schemes", default="", help="comma-separated (default: all)")
  p.add_argument("--preset", default=None, help="config preset (default: the CPU default)")
  p.add_argument("--steps", type=int, default=50, help="timed training steps per scheme")
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--eval_min", type=int, default=41)
  p.add_argument("--eval_max", type=int, default=500)
  p.add_argument("--eval_samples", type=int, default=16,
                 help="samples per evaluated length (the default preset evaluates 128; fewer "
                 "keep a run short, and make the fixed cost of compiling weigh more in the ratios)")
  p.add_argument("--out", default="benchmark.json")
  p.add_argument("--lm", default="", help="comma-separated schemes to time on the LM preset "
                 "(configs/lm/<scheme>.py); default: those with an LM config")
  p.add_argument("--skip_lm", action="store_true", help="skip the LM preset")
  p.add_argument("--skip_seeds", action="store_true", help="skip the num_seeds=8 comparison")
  p.add_argument("--seed_runs", action="store_true",
                 help="also time whole default-preset runs: 8 single-seed runs vs one 8-seed run")
  p.add_argument("--rounds", type=int, default=5,
                 help="interleaved timing rounds (schemes take turns; the median is reported)")
  p.add_argument("--eval_rounds", type=int, default=0,
                 help="also time every evaluation again in this many interleaved rounds (each "
                 "from empty compilation caches) and report the medians; 0: the single pass")
  p.add_argument("--eval_calls", type=int, default=0,
                 help="also time the compiled evaluation programs call by call in this many "
                 "rounds, the schemes taking turns on every call (per-sample cost, compiling "
                 "set aside; ratio to sinusoidal as the median over rounds); 0: skip")
  p.add_argument("--buckets", default="", help="also time training length buckets on this "
                 "preset of configs/sinusoidal.py (e.g. paper): per-bucket steps, the step "
                 "averaged over the length distribution, compile time of all programs")
  p.add_argument("--num_buckets", type=int, default=0,
                 help="buckets for --buckets (0: the preset's config.train.num_buckets)")
  p.add_argument("--compare_buckets", type=int, default=4,
                 help="--buckets: also time this many buckets' programs, for the ratio (0: none)")
  p.add_argument("--buckets_only", action="store_true", help="run only the --buckets timing")
  p.add_argument("--buckets_clock", choices=("wall", "cpu"), default="wall",
                 help="--buckets steps in wall seconds, or in this process's CPU seconds (all "
                 "threads; steadier on a machine shared with other jobs)")
  p.add_argument("--buckets_no_child", action="store_true",
                 help="--buckets_only: skip the second pass with glibc's default allocator "
                 "(a child process with POSENC_MALLOC=system; see posenc/host_memory.py)")
  p.add_argument("--atlas", action="store_true", help="run only the atlas-protocol timing: "
                 "single-seed runs against one run of all seeds, whole processes")
  p.add_argument("--atlas_point", type=int, default=84,
                 help="sweep point of configs/sweeps/atlas.py (84: RoPE on stack_manipulation)")
  p.add_argument("--atlas_steps", type=int, default=1000)
  p.add_argument("--atlas_seeds", type=int, default=0,
                 help="seeds per point (0: the atlas's, configs/sweeps/atlas.py SEEDS)")
  p.add_argument("--atlas_before", action="store_true",
                 help="also time the first v2 protocol (one program, per-seed lengths)")
  p.add_argument("--seed_step_worker", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  # Before JAX's CPU client starts, as experiments.run does (posenc/host_memory.py);
  # POSENC_MALLOC=system times glibc's defaults instead.
  preset = (args.buckets or "paper") if args.buckets_only else args.preset
  memory = host_memory.configure(host_memory.step_bytes(config_for("sinusoidal", preset)))
  if args.seed_step_worker:
    seed_step_worker(args)
    return
  if args.atlas:
    a = bench_atlas(args)
    print(a["markdown"])
    with open(args.out, "w") as f:
      json.dump({"date": time.strftime("%Y-%m-%d"), "args": vars(args), "atlas": a}, f, indent=1)
    print(f"wrote {args.out}")
    return
  if args.buckets_only:
    b = bench_buckets(args.buckets or "paper", args)
    if memory.startswith("kept") and not args.buckets_no_child:
      b["system"] = system_buckets(args)
    b["markdown"] = buckets_markdown(b) + f"\n\nhost memory: {memory}"
    print(b["markdown"])
    with open(args.out, "w") as f:
      json.dump({"date": time.strftime("%Y-%m-%d"), "args": vars(args), "host_memory": memory,
                 "buckets": b}, f, indent=1)
    print(f"wrote {args.out}")
    return

  schemes = [x for x in args.schemes.split(",") if x] or encodings.names()
  if "sinusoidal" in schemes:  # the baseline first
    schemes = ["sinusoidal"] + [x for x in schemes if x != "sinusoidal"]
  dev = jax.devices()[0]
  machine = f"{dev.platform}:{dev.device_kind}, {os.cpu_count()} CPUs, {platform.machine()}"
  rate = matmul_rate()
  print(f"machine: {machine}; dense f32 matmul {rate / 1e9:.1f} GFLOP/s; host memory: {memory}",
        flush=True)
  rows, lm_rows = [], []
  out = {"date": time.strftime("%Y-%m-%d"), "machine": machine, "host_memory": memory,
         "matmul_gflops": rate / 1e9,
         "args": vars(args), "rows": rows, "lm_rows": lm_rows}
  for scheme in schemes:
    try:
      row = bench_scheme(scheme, args, rate)
    except Exception as e:  # noqa: BLE001 — one broken scheme must not hide the others
      row = {"scheme": scheme, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    rows.append(row)
    print(json.dumps(row), flush=True)
    save_partial(out, args.out)
  print(f"timing the training steps again, {args.rounds} interleaved rounds ...", flush=True)
  interleaved_steps(rows, args, rate)
  if args.eval_rounds:
    print(f"timing the evaluations again, {args.eval_rounds} interleaved rounds ...", flush=True)
    interleaved_evaluations(rows, args.eval_rounds)
  if args.eval_calls:
    print(f"timing the evaluation programs call by call, {args.eval_calls} rounds ...", flush=True)
    interleaved_eval_calls(rows, args.eval_calls)
  base = next((r for r in rows if r["scheme"] == "sinusoidal" and "error" not in r), None)
  table = markdown(rows, base, f"{args.eval_min}–{args.eval_max}")
  print(table)
  out["markdown"] = table
  save_partial(out, args.out)

  lm_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "lm")
  lm_schemes = [x for x in args.lm.split(",") if x] or sorted(
      f[:-3] for f in os.listdir(lm_dir) if f.endswith(".py") and f not in ("__init__.py", "base.py")) \
      if os.path.isdir(lm_dir) else []
  for scheme in [] if args.skip_lm else lm_schemes:
    try:
      row = bench_lm(scheme, args, rate)
    except Exception as e:  # noqa: BLE001
      row = {"scheme": scheme, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    lm_rows.append(row)
    print(json.dumps(row), flush=True)
    save_partial(out, args.out)
  lm_table = "\n".join(
      ["| LM scheme | step ms | tokens/s | step GFLOP | MFU |", "|---|---|---|---|---|"] +
      [f"| {r['scheme']} | error: {r['error']} | | | |" if "error" in r else
       f"| {r['scheme']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['step_gflop']:.2f} | "
       f"{100 * r['mfu']:.1f}% |" for r in lm_rows]) if lm_rows else ""
  if lm_table:
    print(lm_table)
  seeds = None if args.skip_seeds else bench_seeds(args, rate=rate)
  if seeds:
    print(f"num_seeds=8 per step: {seeds['sequential_s_per_step'] * 1e3:.1f} ms for 8 sequential "
          f"steps; one 8-seed step vmapped {seeds['vmapped_s_per_step'] * 1e3:.1f} ms "
          f"({seeds['speedup']:.2f}x), mapped {seeds['mapped_s_per_step'] * 1e3:.1f} ms "
          f"({seeds['speedup_mapped']:.2f}x); as experiments.run runs it ({seeds['auto_seed_loop']} "
          f"over {seeds['auto_devices']} devices) {seeds['auto_s_per_step'] * 1e3:.1f} ms "
          f"({seeds['speedup_auto']:.2f}x)")
    if "mfu_auto" in seeds:
      print(f"num_seeds=8 against the matmul rate: the 8-seed step runs at {100 * seeds['mfu_auto']:.1f}% "
            f"MFU; 3x per step would need {100 * seeds['mfu_needed_3x']:.1f}%; at 100% the "
            f"speedup would be {seeds['ceiling_speedup']:.2f}x")
    if "run_speedup" in seeds:
      print(f"num_seeds=8 whole runs: 8 single-seed runs {seeds['sequential_runs_s']:.1f} s, one "
            f"8-seed run {seeds['one_run_s']:.1f} s ({seeds['run_speedup']:.2f}x)")
  out.update({"lm_markdown": lm_table, "seeds": seeds})
  save_partial(out, args.out)
  if args.buckets:
    print(f"timing training length buckets ({args.buckets} preset) ...", flush=True)
    out["buckets"] = bench_buckets(args.buckets, args)
    out["buckets"]["markdown"] = buckets_markdown(out["buckets"])
    print(out["buckets"]["markdown"])
    save_partial(out, args.out)
  os.replace(args.out + ".partial", args.out)  # complete: only now is an earlier file replaced
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
