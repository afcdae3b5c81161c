"""The accelerator report of ``scripts/device_check.sh``: speed, utilisation and one seeded run.

  python scripts/device_report.py                      # on a GPU/TPU: the paper preset
  python scripts/device_report.py --cpu                # tiny settings on a CPU (a dry run)

Measures, in one process, on the first device JAX sees:

* the device's dense matmul rate, float32 and bfloat16 (``n x n`` products, ``n = 4096`` on
  accelerators): the denominators of MFU;
* for each scheme (``--schemes``) and activation dtype (``--dtypes``) on ``--preset``: the
  training step's compile time, steps/s, tokens/s (padded tokens, the work done), MFU (XLA's
  FLOP count of the step over its time, against the matmul rate of the same dtype), and an
  evaluation over lengths ``--eval_min..--eval_max`` as a run makes it: wall seconds, the part
  spent compiling, and the number of programs it compiled;
* one short run of ``--run_scheme`` on ``--preset`` with ``num_seeds = --num_seeds`` vmapped
  in one program (``train.train_and_evaluate``: training, evaluation, results written): wall
  seconds, steps/s of the seeded step, and the in-range score of each seed.

Prints Markdown tables and writes JSON (``--out``). Timing helpers come from
``scripts/benchmark.py`` (``time_training``, ``time_evaluation``); this script only chooses
what to time and how to report it. Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from scripts import benchmark  # noqa: E402 — sets up jax, logging and the compile listeners

import jax  # noqa: E402

from posenc import seeds as seeds_lib, setup as setup_lib, train  # noqa: E402


def _config(scheme: str, args, **overrides):
  c = benchmark.config_for(scheme, args.preset)
  with c.unlocked():
    c.eval.min_length, c.eval.max_length = args.eval_min, args.eval_max
    c.eval.samples_per_length = args.eval_samples
    c.eval.batch_size = min(c.eval.batch_size, args.eval_samples)
    if "max_len" in c.encoding:  # learned tables: rows for the evaluated lengths
      c.encoding.max_len = max(c.encoding.max_len, 2 * args.eval_max + 8)
    for key, value in overrides.items():
      node = c
      *path, last = key.split(".")
      for part in path:
        node = node[part]
      node[last] = value
  return c


def bench(scheme: str, dtype: str, args, rates: dict) -> dict:
  """One scheme in one dtype: training step and evaluation (``benchmark``'s timings)."""
  c = _config(scheme, args, **{"model.dtype": dtype})
  s = setup_lib.setup(c)
  r = benchmark.time_training(s, args)
  step_s, flops = r["step_s"], r["flops"]
  n0 = len(benchmark._COMPILES)  # noqa: SLF001 — the compile listener's record
  eval_s, eval_compile_s = benchmark.time_evaluation(s, r["state"]["params"], r["keys"]["eval"])
  return {"scheme": scheme, "mode": "decoder" if s.causal else "encoder", "dtype": dtype,
          "compile_s": r["compile_s"], "step_ms": 1e3 * step_s, "steps_per_s": 1 / step_s,
          "tokens_per_s": c.train.batch_size * s.train_padded / step_s,
          "step_gflop": flops / 1e9,
          "mfu": (flops / step_s) / rates[dtype] if flops and rates.get(dtype) else None,
          "eval_s": eval_s, "eval_compile_s": eval_compile_s,
          "eval_programs": len(benchmark._COMPILES) - n0,  # noqa: SLF001
          "peak_mem_mb": benchmark.peak_memory_mb()}


def seeded_run(args) -> dict:
  """A short run of ``args.run_scheme`` with ``args.num_seeds`` seeds vmapped in one program."""
  c = _config(args.run_scheme, args, num_seeds=args.num_seeds, seed_loop="vmap",
              **{"eval.min_length": 1,  # the training lengths too: the in-range score
                 "train.steps": args.run_steps, "train.log_every": max(args.run_steps // 4, 1),
                 "checkpoint.every_steps": args.run_steps})
  with tempfile.TemporaryDirectory() as tmp:
    c.workdir = os.path.join(tmp, "run")
    lines = []
    t = time.perf_counter()
    results = train.train_and_evaluate(c, log=lines.append)
    wall = time.perf_counter() - t
  scores = results.get("in_range_score_per_seed") or [results.get("in_range_score")]
  out_scores = results.get("out_of_range_score_per_seed") or [results.get("out_of_range_score")]
  return {"scheme": args.run_scheme, "preset": c.preset, "num_seeds": c.num_seeds,
          "seed_loop": seeds_lib.seed_loop(c), "steps": c.train.steps, "wall_s": wall,
          "in_range_per_seed": scores, "out_of_range_per_seed": out_scores,
          "eval_lengths": [c.eval.min_length, c.eval.max_length],
          "samples_per_length": c.eval.samples_per_length, "log_tail": lines[-6:]}


def device_info() -> dict:
  d = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": getattr(d, "device_kind", str(d)),
          "devices": jax.device_count(), "jax": jax.__version__, "host": platform.node(),
          "python": platform.python_version(),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def markdown(report: dict) -> str:
  info, rates = report["device"], report["matmul_tflops"]
  lines = [f"Device: {info['device']} x{info['devices']} ({info['backend']}), jax {info['jax']}, "
           f"{info['date']}; preset {report['preset']}; dense matmul "
           + ", ".join(f"{k} {v:.1f} TFLOP/s" if v >= 1 else f"{k} {1e3 * v:.1f} GFLOP/s"
                       for k, v in rates.items()), "",
           "| scheme | mode | dtype | compile s | steps/s | tokens/s | MFU | "
           f"eval {report['eval_range']} s | of which compiling | eval programs | peak MB |",
           "|---" * 11 + "|"]
  for r in report["rows"]:
    if "error" in r:
      lines.append(f"| {r['scheme']} | | {r['dtype']} | error: {r['error']} |" + " |" * 7)
      continue
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
    lines.append(f"| {r['scheme']} | {r['mode']} | {r['dtype']} | {r['compile_s']:.1f} | "
                 f"{r['steps_per_s']:,.1f} | {r['tokens_per_s']:,.0f} | {mfu} | {r['eval_s']:.1f} | "
                 f"{r['eval_compile_s']:.1f} | {r['eval_programs']} | {r['peak_mem_mb']:.0f} |")
  run = report.get("seeded_run")
  if run and "error" not in run:
    fmt = lambda xs: ", ".join("n/a" if x is None else f"{x:.3f}" for x in xs)
    lines += ["", f"Seeded run: {run['scheme']}:{run['preset']}, {run['num_seeds']} seeds "
              f"({run['seed_loop']}), {run['steps']} steps, evaluation "
              f"{run['eval_lengths'][0]}–{run['eval_lengths'][1]} x {run['samples_per_length']}: "
              f"{run['wall_s']:.1f} s wall; in-range accuracy per seed [{fmt(run['in_range_per_seed'])}], "
              f"beyond [{fmt(run['out_of_range_per_seed'])}]"]
  elif run:
    lines += ["", f"Seeded run: error: {run['error']}"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cpu", action="store_true",
                 help="tiny settings for a dry run on a CPU (smoke preset, a few steps)")
  p.add_argument("--preset", default=None, help="default: paper (--cpu: smoke)")
  p.add_argument("--schemes", default=None,
                 help="comma-separated (default: sinusoidal,rope,alibi,floater; --cpu: sinusoidal,alibi)")
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--steps", type=int, default=None, help="timed steps (default 100; --cpu 3)")
  p.add_argument("--warmup", type=int, default=None, help="default 10; --cpu 1")
  p.add_argument("--eval_min", type=int, default=None, help="default 41; --cpu 1")
  p.add_argument("--eval_max", type=int, default=None, help="default 500; --cpu 10")
  p.add_argument("--eval_samples", type=int, default=None, help="default 128; --cpu 4")
  p.add_argument("--run_scheme", default="sinusoidal")
  p.add_argument("--num_seeds", type=int, default=None, help="default 8; --cpu 2")
  p.add_argument("--run_steps", type=int, default=None, help="default 1000; --cpu 4")
  p.add_argument("--matmul_n", type=int, default=None, help="default 4096; --cpu 256")
  p.add_argument("--out", default="device_report.json")
  args = p.parse_args(argv)
  tiny = args.cpu
  defaults = {"preset": "smoke" if tiny else "paper", "steps": 3 if tiny else 100,
              "schemes": "sinusoidal,alibi" if tiny else "sinusoidal,rope,alibi,floater",
              "warmup": 1 if tiny else 10, "eval_min": 1 if tiny else 41,
              "eval_max": 10 if tiny else 500, "eval_samples": 4 if tiny else 128,
              "num_seeds": 2 if tiny else 8, "run_steps": 4 if tiny else 1000,
              "matmul_n": 256 if tiny else 4096}
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if not tiny and jax.default_backend() == "cpu":
    print("device_report: JAX sees only a CPU; for a dry run pass --cpu", file=sys.stderr)

  dtypes = [d for d in args.dtypes.split(",") if d]
  report = {"device": device_info(), "preset": args.preset,
            "eval_range": f"{args.eval_min}–{args.eval_max}",
            "matmul_tflops": {}, "rows": [], "args": vars(args)}
  rates = {d: benchmark.matmul_rate(args.matmul_n, dtype=d) for d in dtypes}
  report["matmul_tflops"] = {d: r / 1e12 for d, r in rates.items()}
  for scheme in [x for x in args.schemes.split(",") if x]:
    for dtype in dtypes:
      t = time.perf_counter()
      try:
        row = bench(scheme, dtype, args, rates)
      except Exception as e:  # noqa: BLE001 — report the failure, time the rest
        row = {"scheme": scheme, "dtype": dtype, "error": f"{type(e).__name__}: {str(e)[:200]}"}
      print(f"  {scheme} {dtype}: {time.perf_counter() - t:.1f}s", flush=True)
      report["rows"].append(row)
  if args.num_seeds:
    try:
      report["seeded_run"] = seeded_run(args)
    except Exception as e:  # noqa: BLE001
      report["seeded_run"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
  report["markdown"] = markdown(report)
  print(report["markdown"], flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2, default=str)
  return report


if __name__ == "__main__":
  main()
