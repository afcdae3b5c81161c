"""Evaluation: every length of ``[eval.min_length, eval.max_length]`` scored, a program per bucket.

The evaluated lengths are grouped into ``eval.num_buckets`` buckets (``Setup.eval_buckets``,
``data.buckets``); each bucket is one jitted program (:class:`EvalProgram`,
:func:`evaluation_programs`) that scores one length and chunk of samples per call, padded to
the bucket's longest length and masked. Every bucket draws its samples at the longest
evaluated width with ``fold_in(fold_in(eval_key, length), chunk)``, so a length's samples and
score do not depend on the bucketing. Inside a program the rows go through the model in passes
of :func:`eval_micro_batch` rows (:func:`over_micro_batches`). A scheme's ``EVAL_CACHE``
arrays are computed once for the longest evaluated position (:func:`eval_cache`), and its
optional ``report`` gives ``results.json``'s ``encoding_report`` (:func:`encoding_report`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from posenc import data as data_lib
from posenc import decoding
from posenc import encodings, parallel, positions as positions_lib
from posenc.errors import SchemeRuntimeError
from posenc.seeds import data_mesh, seed_loop, seeded
from posenc.setup import Setup, diagnostics


@dataclasses.dataclass
class EvalProgram:
  """One evaluation bucket: its compiled-on-first-call program and the calls that run it.

  ``score(*args)`` returns the bucket's sums for one length and chunk (per seed with several
  seeds): ``[sum of sequence scores, count]`` (+ greedy exact-match and token sums).
  ``calls`` lists ``(length, args)`` for every evaluated length and chunk, in order.
  """
  lengths: list[int]
  padded: int
  micro: int
  score: Callable
  calls: list[tuple[int, tuple]]


def evaluation_programs(s: Setup, params, key: jax.Array, *, num_seeds: int = 1,
                        greedy: bool = False) -> Iterator[EvalProgram]:
  """The evaluation of :func:`evaluate` as one :class:`EvalProgram` per bucket, in order.

  The scheme's evaluation cache (:func:`eval_cache`) is computed when the first program is
  asked for. Nothing is compiled until a program is first called. :func:`evaluate` runs them;
  ``scripts/benchmark.py`` also times their calls one by one.
  """
  e = s.config.eval
  mesh = data_mesh(s.config)
  cache = eval_cache(s, params, num_seeds)
  how = seed_loop(s.config)
  batch_size = min(e.batch_size, e.samples_per_length)
  chunks = math.ceil(e.samples_per_length / batch_size)
  output_offset = data_lib.NUM_SPECIAL + s.task.input_vocab_size
  contiguous = positions_lib.shared_contiguous(s.config.positions, train=False)
  # Every bucket draws its samples at the width of the longest evaluated length, so a length's
  # samples (and so its score) do not depend on how the lengths are bucketed.
  sample_max = max(max(lengths) for lengths, _ in s.eval_buckets)
  for lengths, padded in s.eval_buckets:
    model = s.model(s.eval_bound(padded), contiguous=contiguous)
    batch_fn = data_lib.make_batch_fn(
        s.task, positions_lib.make(s.config.positions, train=False), batch_size=batch_size,
        lengths=lengths, padded_length=padded, causal=s.causal, sample_max=sample_max)

    micro = eval_micro_batch(s.config, batch_size, padded)

    def score_one(params, cache, key, index, chunk, model=model, batch_fn=batch_fn,
                  lengths=lengths, micro=micro):
      length = jnp.asarray(lengths, jnp.int32)[index]
      batch = batch_fn(jax.random.fold_in(jax.random.fold_in(key, length), chunk), index)
      if batch_size % mesh.size == 0:
        batch = parallel.shard_batch(batch, mesh, batch_size)
      variables = {"params": params, **cache}

      def score_rows(rows):
        logits = model.apply(variables, rows["tokens"], rows["positions"], rows["valid"],
                             train=False)
        seq, has = data_lib.sequence_scores(logits, rows)
        out = [jnp.sum(jnp.where(has, seq, 0.0)), jnp.sum(has)]
        if greedy:
          preds = decoding.greedy(model, variables, rows, output_offset=output_offset,
                                  answer_length=s.task.output_length(length))
          exact, frac, _ = decoding.scores(preds, rows)
          out += [jnp.sum(exact), jnp.sum(jnp.where(has, frac, 0.0))]
        return jnp.stack(out)

      return over_micro_batches(score_rows, batch, batch_size, micro)

    def score_seeds(params, cache, key, index, chunk, score_one=score_one):
      if how.startswith("shard") and num_seeds > 1:  # shard_map takes arrays, not closed-over tracers
        along = lambda x: jnp.broadcast_to(x, (num_seeds,))
        return seeded(score_one, num_seeds, how)(params, cache, key, along(index), along(chunk))
      one = lambda p, c, k: score_one(p, c, k, index, chunk)
      return seeded(one, num_seeds, how)(params, cache, key)

    score = jax.jit(score_seeds, out_shardings=parallel.replicated(mesh) if mesh.size > 1 else None)
    calls = [(length, (params, cache, key, i, c))
             for i, length in enumerate(lengths) for c in range(chunks)]
    yield EvalProgram(list(lengths), padded, micro, score, calls)


def dispatch_line(lengths, padded: int, micro: int, batch_size: int, elapsed: float) -> str:
  """The log line of one dispatched evaluation program (its lengths, padding, rows per pass)."""
  span = f"length {lengths[0]}" if lengths[0] == lengths[-1] else f"lengths {lengths[0]}–{lengths[-1]}"
  passes = f", {micro} row{'' if micro == 1 else 's'} per pass" if micro < batch_size else ""
  return f"eval: {span} (padded to {padded}{passes}) dispatched, {elapsed:.1f}s"


def evaluate(s: Setup, params, key: jax.Array, *, log: Callable[[str], None] | None = print,
             num_seeds: int = 1, greedy: bool = False):
  """Scores every length in ``[eval.min_length, eval.max_length]``; one program per bucket.

  Returns ``{length: teacher-forced accuracy}``. With ``num_seeds > 1``, ``params`` and
  ``key`` carry a leading seed axis, the seeds run inside each program (vmapped or mapped,
  :func:`seed_loop`), and a list of per-seed dicts is returned. With ``greedy`` (a decoder), each program also decodes the
  answers greedily with a key/value cache (``posenc.decoding``) and the return value is
  ``(accuracy, exact_match, greedy_token_accuracy)``, each as above.
  """
  batch_size = min(s.config.eval.batch_size, s.config.eval.samples_per_length)
  sums: dict[int, list] = {}
  t0 = time.perf_counter()
  for prog in evaluation_programs(s, params, key, num_seeds=num_seeds, greedy=greedy):
    for length, args in prog.calls:  # dispatched without waiting: the host runs ahead
      sums.setdefault(length, []).append(prog.score(*args))
    if log:
      log(dispatch_line(prog.lengths, prog.padded, prog.micro, batch_size,
                        time.perf_counter() - t0))
  metrics = 3 if greedy else 1
  per_seed = [[{} for _ in range(num_seeds)] for _ in range(metrics)]
  for length, parts in sums.items():
    total = np.sum(np.stack(jax.device_get(parts)), axis=0).reshape(num_seeds, -1)
    for k in range(num_seeds):
      for m, column in enumerate((0, 2, 3)[:metrics]):
        per_seed[m][k][length] = (float(total[k, column] / total[k, 1]) if total[k, 1] > 0
                                  else float("nan"))
  out = [p if num_seeds > 1 else p[0] for p in per_seed]
  return tuple(out) if greedy else out[0]


# Tokens per evaluation pass on a CPU (auto micro-batch). Measured on the 2-core CPU of the
# README's Speed section (sinusoidal, d_model 64, 4 heads): per-sample cost is lowest with
# roughly 300-2000 tokens per pass and grows 2.5-4x with whole batches of long sequences,
# whose attention scores no longer stay in cache (batch 32 at 1000 tokens: 34 ms/sample;
# passes of 2 rows: 12.6 ms/sample).
EVAL_PASS_TOKENS = 1024


def eval_micro_batch(config: ml_collections.ConfigDict, batch_size: int, padded_length: int) -> int:
  """Rows per forward pass inside an evaluation program: a divisor of ``batch_size``.

  ``config.eval.micro_batch`` > 0 is taken as given (setup checks that it divides the batch).
  0 (auto): on a CPU, the largest divisor of the batch with at most ``EVAL_PASS_TOKENS``
  tokens, and at least 2 rows when the batch has them (one row leaves a core idle); on
  accelerators, the whole batch.
  """
  asked = int(config.eval.get("micro_batch", 0) or 0)
  if asked:
    return min(asked, batch_size)
  if jax.default_backend() != "cpu":
    return batch_size
  rows = max(2, EVAL_PASS_TOKENS // max(padded_length, 1))
  return max(d for d in range(1, batch_size + 1) if batch_size % d == 0 and d <= rows)


def over_micro_batches(fn: Callable[[dict], jax.Array], batch: dict, batch_size: int,
                       micro: int) -> jax.Array:
  """``fn(rows)`` (an array of sums over the rows) over consecutive ``micro``-row slices of
  ``batch``, added up, in one ``lax.map``: the same rows and sums as ``fn(batch)`` with a
  working set that stays in cache. Arrays without the batch axis (shared positions, the
  length) go to every slice as they are."""
  if micro >= batch_size:
    return fn(batch)
  per_row = {k: v for k, v in batch.items() if jnp.ndim(v) and v.shape[0] == batch_size}
  shared = {k: v for k, v in batch.items() if k not in per_row}
  parts = {k: v.reshape(batch_size // micro, micro, *v.shape[1:]) for k, v in per_row.items()}
  return jnp.sum(jax.lax.map(lambda rows: fn({**shared, **rows}), parts), axis=0)


def eval_cache(s: Setup, params, num_seeds: int = 1) -> dict:
  """The scheme's ``EVAL_CACHE`` arrays, computed once for the longest evaluated sequence.

  Returns ``{"cache": {"encoding": {name: array}}}`` (empty when the scheme declares none),
  to be merged into the variables of every evaluation program.
  """
  names = getattr(encodings.get(s.config.encoding.name), "EVAL_CACHE", ())
  if not names or not s.eval_buckets:
    return {}
  model = s.model(max(s.eval_bound(padded) for _, padded in s.eval_buckets))

  def compute(params):
    def read(m):
      enc = m.encoding
      return {n: getattr(enc, n) for n in enc.eval_cache_names() if hasattr(enc, n)}
    # With "diagnostics" a scheme reports failures (FLOATER's solver) as values, checked
    # below on the host, so the program has no host callback and the persistent compilation
    # cache can keep it.
    arrays, diag = model.apply({"params": params}, method=read, mutable=["diagnostics"])
    return arrays, diagnostics(diag)

  arrays, diag = jax.jit(seeded(compute, num_seeds, seed_loop(s.config)))(params)
  cause = encodings.get(s.config.encoding.name).explain_failure(
      jax.device_get(diag), s.config.encoding, max(s.eval_bound(p) for _, p in s.eval_buckets))
  if cause is not None:
    raise SchemeRuntimeError(cause)
  return {"cache": {"encoding": arrays}} if arrays else {}


def encoding_report(s: Setup, params, num_seeds: int = 1) -> list[dict]:
  """Per seed, the scheme's own numbers about its trained parameters for ``results.json``,
  from its optional module method ``report(train_positions)`` (jittable, returning scalars),
  applied at the longest evaluated position (FLOATER: its trajectory's growth beyond the
  training positions); ``[{}, ...]`` when the scheme defines none."""
  if not callable(getattr(encodings.get(s.config.encoding.name), "report", None)) or not s.eval_buckets:
    return [{} for _ in range(num_seeds)]
  model = s.model(max(s.eval_bound(padded) for _, padded in s.eval_buckets))

  def compute(params):  # "diagnostics" mutable: schemes report failures as values (no callback)
    out, _ = model.apply({"params": params}, method=lambda m: m.encoding.report(s.train_bound()),
                         mutable=["diagnostics"])
    return out

  out = jax.device_get(jax.jit(seeded(compute, num_seeds, seed_loop(s.config)))(params))
  return [{k: float(np.reshape(v, (num_seeds, -1))[i, 0]) for k, v in out.items()}
          for i in range(num_seeds)]
