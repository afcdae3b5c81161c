"""Byte-level causal language modelling on real text: perplexity against evaluation length.

The task ``lm`` (Press et al., ICLR 2022, "Train Short, Test Long"): a causal decoder
reads bytes and predicts the next byte; it trains on windows of ``L =
config.task.train_max_length`` bytes and is evaluated at ``L' = m L`` for ``m`` in
``config.task.eval_multipliers`` (default 1, 2, 4, 8, 16) two ways:

1. **non-overlapping windows** (the ALiBi paper's protocol): the first ``N`` bytes of
   the validation text (``N`` = ``config.task.eval_tokens`` rounded down to a multiple of
   the longest ``L'``) are cut into windows of ``L'`` bytes; every byte ``1..N`` is
   predicted exactly once, from the bytes before it in its window. Longer windows give
   most bytes more context but the first bytes of each window little.
2. **fixed final tokens** (the NoPE paper's protocol): ``config.task.eval_windows``
   fixed end points in the validation text; at every ``L'`` the window of ``L'`` bytes
   ending there is read and only its last ``config.task.eval_final_tokens`` predictions
   are scored, so every ``L'`` scores the same bytes and only the context grows.

Both report perplexity ``exp(mean NLL)`` and bits per byte ``mean NLL / ln 2``
(a uniform guess over 256 bytes: perplexity 256, 8 bits per byte). ``per_length`` of
``results.json`` is protocol 1's perplexity; ``in_range_score`` is protocol 1's bits
per byte at ``L`` and ``out_of_range_score`` their mean over ``L' > L`` (lower is
better, unlike the accuracy of the algorithmic tasks); the full tables of both
protocols are under ``results["lm"]``. One compiled program per evaluation length
serves both protocols.

Corpus (``config.task.corpus``): empty (default) means the running Python's standard
library sources: the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]``, outside
``site-packages``/``dist-packages``, sorted by relative path. A directory gives its files
matching ``config.task.corpus_glob`` (recursively, sorted); a file is read whole. Files
are split into train and validation by a hash of their relative path (a fraction
``config.task.valid_fraction``, default 10%); a single file, or a directory whose hash
split leaves one side too small, is split by bytes instead (the last fraction is
validation; ``split`` in the manifest says which). The manifest (SHA-256 over the sorted
relative paths and sizes) goes into ``results.json``. The text is read once, lazily,
into one device ``uint8`` array per split; training windows are drawn on the device.

Tokens: input bytes 0..255 (model ids ``byte + posenc.data.NUM_SPECIAL``); output the
next byte, 0..255. Refuses an encoder (``config.model.causal`` must be True).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import pathlib
import sysconfig
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from posenc.errors import ConfigError
from posenc.tasks import padding
from posenc.tasks.base import Task

NUM_SPECIAL = 3  # posenc.data.NUM_SPECIAL (PAD, BLANK, SEP); not imported to avoid a cycle
PAD = 0

# Fields of config.task this task reads, with their defaults (a config without them,
# e.g. a sweep built on configs/base.py, gets these).
DEFAULTS = {
    "corpus": "",                  # "": the stdlib sources; else a text file or a directory
    "corpus_glob": "*.py",         # files of a directory corpus (recursive)
    "valid_fraction": 0.1,         # share of files (by path hash) held out for validation
    "eval_multipliers": "1,2,4,8,16",  # evaluation lengths L' = m * train_max_length
    "eval_tokens": 32768,          # protocol 1: validation bytes scored at every L'
    "eval_windows": 32,            # protocol 2: fixed end points
    "eval_final_tokens": 32,       # protocol 2: final predictions scored per window
    "eval_batch_tokens": 8192,     # evaluation batch = max(1, this // L') windows
}
_EXCLUDED_DIRS = ("site-packages", "dist-packages", "__pycache__")


def stdlib_root() -> str:
  """The running interpreter's standard-library source folder."""
  return sysconfig.get_paths()["stdlib"]


# ----------------------------------------------------------------------------- corpus


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What a corpus is made of, before any byte is read."""

  source: str                       # the folder or file read
  files: tuple[tuple[str, int], ...]  # (relative path, size), sorted by path
  glob: str
  valid_fraction: float

  @property
  def num_bytes(self) -> int:
    return sum(size for _, size in self.files)

  @property
  def sha256(self) -> str:
    return manifest_hash(self.files)

  def is_single_file(self) -> bool:
    return os.path.isfile(self.source)


def manifest_hash(files: Sequence[tuple[str, int]]) -> str:
  """SHA-256 over the sorted ``relative path <TAB> size`` lines of a corpus."""
  h = hashlib.sha256()
  for rel, size in sorted(files):
    h.update(f"{rel}\t{size}\n".encode())
  return h.hexdigest()


def is_validation(rel_path: str, fraction: float) -> bool:
  """Whether a file belongs to the validation split: a hash of its relative path."""
  digest = hashlib.sha256(rel_path.encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < fraction


def scan_corpus(corpus: str, glob: str = "*.py", valid_fraction: float = 0.1) -> Manifest:
  """Lists the corpus files (no byte is read); ConfigError naming config.task.corpus."""
  field = "config.task.corpus"
  default = not corpus
  source = stdlib_root() if default else os.path.abspath(os.path.expanduser(corpus))
  if not os.path.exists(source):
    raise ConfigError(field, f"{corpus!r} does not exist; name a text file or a folder of "
                      "text files, or leave it empty for the Python standard library")
  if os.path.isfile(source):
    files = ((os.path.basename(source), os.path.getsize(source)),)
  else:
    root = pathlib.Path(source)
    found = []
    for path in root.rglob(glob):
      rel = path.relative_to(root)
      if default and any(part in _EXCLUDED_DIRS for part in rel.parts):
        continue
      if path.is_file() and not path.is_symlink():
        found.append((rel.as_posix(), path.stat().st_size))
    files = tuple(sorted(found))
  manifest = Manifest(source, files, glob, float(valid_fraction))
  if manifest.num_bytes == 0:
    what = "is empty" if os.path.isfile(source) else (
        f"holds no non-empty files matching config.task.corpus_glob={glob!r}")
    raise ConfigError(field, f"{source!r} {what}; name a non-empty text file or folder")
  return manifest


@dataclasses.dataclass(frozen=True)
class Corpus:
  """The bytes of a corpus, split; host arrays (``device`` puts them on the device)."""

  manifest: Manifest
  train: np.ndarray   # uint8
  valid: np.ndarray   # uint8
  split: str          # "path-hash" or "bytes"

  def info(self) -> dict:
    m = self.manifest
    return {"source": m.source, "glob": m.glob, "files": len(m.files), "bytes": m.num_bytes,
            "manifest_sha256": m.sha256, "split": self.split,
            "valid_fraction": m.valid_fraction, "train_bytes": int(self.train.size),
            "valid_bytes": int(self.valid.size)}


def _read(manifest: Manifest, rels: Sequence[str]) -> np.ndarray:
  if manifest.is_single_file():
    with open(manifest.source, "rb") as f:
      return np.frombuffer(f.read(), np.uint8)
  parts = []
  for rel in rels:
    with open(os.path.join(manifest.source, rel), "rb") as f:
      parts.append(np.frombuffer(f.read(), np.uint8))
  return np.concatenate(parts) if parts else np.zeros((0,), np.uint8)


def split_sizes(manifest: Manifest, min_train: int = 1,
                min_valid: int = 1) -> tuple[int, int, str]:
  """(train bytes, validation bytes, split kind) of the split ``load_corpus`` will make,
  from the manifest alone: by path hash, or by bytes for a single file or when a side of
  the hash split would be smaller than ``min_train`` / ``min_valid``."""
  if not manifest.is_single_file():
    valid = sum(size for rel, size in manifest.files
                if is_validation(rel, manifest.valid_fraction))
    if manifest.num_bytes - valid >= min_train and valid >= min_valid:
      return manifest.num_bytes - valid, valid, "path-hash"
  n = manifest.num_bytes
  n_valid = int(round(n * manifest.valid_fraction))
  return n - n_valid, n_valid, "bytes"


def load_corpus(manifest: Manifest, min_train: int = 1, min_valid: int = 1) -> Corpus:
  """Reads and splits the corpus (see ``split_sizes``)."""
  _, _, split = split_sizes(manifest, min_train, min_valid)
  if split == "path-hash":
    rels = [rel for rel, _ in manifest.files]
    val = [r for r in rels if is_validation(r, manifest.valid_fraction)]
    tr = [r for r in rels if not is_validation(r, manifest.valid_fraction)]
    return Corpus(manifest, _read(manifest, tr), _read(manifest, val), split)
  text = _read(manifest, [rel for rel, _ in manifest.files])
  n_valid = int(round(text.size * manifest.valid_fraction))
  return Corpus(manifest, text[:text.size - n_valid], text[text.size - n_valid:], "bytes")


@functools.lru_cache(maxsize=4)
def _cached_corpus(manifest: Manifest, min_train: int, min_valid: int) -> Corpus:
  return load_corpus(manifest, min_train, min_valid)


# ----------------------------------------------------------------------------- evaluation


def protocol1_starts(num_tokens: int, length: int) -> np.ndarray:
  """Window starts of protocol 1: ``num_tokens // length`` non-overlapping windows.

  Window ``k`` reads bytes ``[k L', (k + 1) L')`` and predicts bytes ``k L' + 1 ..
  (k + 1) L'``, so the windows predict bytes ``1..num_tokens`` exactly once each when
  ``length`` divides ``num_tokens``.
  """
  return np.arange(num_tokens // length, dtype=np.int64) * length


def protocol2_ends(valid_size: int, longest: int, count: int) -> np.ndarray:
  """Fixed end points of protocol 2 (the index of the last predicted byte), evenly spread
  so that the longest window ending at each fits: ``longest <= end <= valid_size - 1``."""
  if valid_size - 1 < longest:
    return np.zeros((0,), np.int64)
  return np.unique(np.linspace(longest, valid_size - 1, count).astype(np.int64))


def protocol2_starts(ends: np.ndarray, length: int) -> np.ndarray:
  """Window starts of protocol 2: the window of ``length`` inputs whose last prediction
  is the byte at ``end`` reads bytes ``[end - length, end)``."""
  return ends - length


def nll_program(apply_fn: Callable, position_fn: Callable, length: int,
                batch: int) -> Callable:
  """``f(params, data, starts [batch], key) -> NLL [batch, length]`` (nats) of windows.

  Window ``b`` reads ``data[starts[b] : starts[b] + length]`` and is scored on the next
  bytes ``data[starts[b] + 1 : starts[b] + length + 1]``. ``apply_fn(params, tokens,
  positions, valid) -> logits [batch, length, 256]``; ``data`` is a device uint8 array
  passed as an argument (not baked into the program).
  """

  @jax.jit
  def f(params, data, starts, key):
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (length + 1,)))(starts)
    windows = windows.astype(jnp.int32)
    tokens, targets = windows[:, :-1] + NUM_SPECIAL, windows[:, 1:]
    positions = position_fn(key, batch, length, length)
    valid = jnp.ones((batch, length), bool)
    logits = apply_fn(params, tokens, positions, valid).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

  return f


def score_windows(program: Callable, params, data, starts: np.ndarray, batch: int,
                  score_from: int, key: jax.Array) -> tuple[float, int]:
  """(sum of NLL, count) over the predictions ``score_from..`` of the windows at ``starts``.

  Windows run ``batch`` at a time through one compiled ``program``; the last batch is
  padded with copies of the first window, whose scores are dropped.
  """
  pending = []
  for i in range(0, len(starts), batch):
    chunk = starts[i:i + batch]
    padded = np.concatenate([chunk, np.full(batch - len(chunk), starts[0])]).astype(np.int32)
    pending.append((len(chunk), program(params, data, jnp.asarray(padded),
                                        jax.random.fold_in(key, i))))
  total, count = 0.0, 0
  for n, nll in pending:
    part = np.asarray(jax.device_get(nll), np.float64)[:n, score_from:]
    total += float(part.sum())
    count += part.size
  return total, count


def summarize_nll(total: float, count: int) -> dict:
  """Perplexity and bits per byte of a summed NLL (nats) over ``count`` predictions."""
  mean = total / max(count, 1)
  return {"perplexity": float(math.exp(mean)), "bits_per_byte": float(mean / math.log(2)),
          "tokens": int(count)}


# ----------------------------------------------------------------------------- the task


def _field(config, name: str):
  task_cfg = config.task if config is not None and "task" in config else config
  if task_cfg is not None and name in task_cfg:
    return task_cfg[name]
  return DEFAULTS[name]


def parse_multipliers(value) -> tuple[int, ...]:
  items = value.split(",") if isinstance(value, str) else list(value)
  try:
    out = tuple(int(str(v).strip()) for v in items if str(v).strip())
  except ValueError:
    out = ()
  if not out or min(out) < 1:
    raise ConfigError("config.task.eval_multipliers",
                      f"{value!r} is not a list of positive integers, e.g. \"1,2,4,8,16\"")
  return tuple(sorted(set(out)))


class LanguageModelling(Task):
  """Byte-level causal language modelling (see the module docstring).

  Tokens: input bytes 0..255; output the next byte 0..255. A sample of length ``l``
  is ``l`` consecutive bytes and the ``l`` bytes that follow each of them
  (``sequence_length(l) = output_length(l) = l``: every token is also an answer).
  """

  name = "lm"
  level = "lm"
  input_vocab_size = 256
  output_vocab_size = 256

  def __init__(self, corpus: str = "", *, corpus_glob: str = DEFAULTS["corpus_glob"],
               valid_fraction: float = DEFAULTS["valid_fraction"], train_max_length: int = 128,
               eval_lengths: Sequence[int] | None = None, eval_tokens: int = DEFAULTS["eval_tokens"],
               eval_windows: int = DEFAULTS["eval_windows"],
               eval_final_tokens: int = DEFAULTS["eval_final_tokens"],
               eval_batch_tokens: int = DEFAULTS["eval_batch_tokens"]):
    if not 0.0 < float(valid_fraction) < 1.0:
      raise ConfigError("config.task.valid_fraction", f"must be in (0, 1), got {valid_fraction}")
    for field, value in (("eval_tokens", eval_tokens), ("eval_windows", eval_windows),
                         ("eval_final_tokens", eval_final_tokens),
                         ("eval_batch_tokens", eval_batch_tokens)):
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"config.task.{field}", f"must be a positive integer, got {value!r}")
    self.train_max_length = int(train_max_length)
    self.eval_lengths = tuple(sorted(set(eval_lengths or [self.train_max_length * m for m in
                                                          parse_multipliers(DEFAULTS["eval_multipliers"])])))
    if eval_final_tokens > min(self.eval_lengths):
      raise ConfigError("config.task.eval_final_tokens",
                        f"{eval_final_tokens} exceeds the shortest evaluation length "
                        f"{min(self.eval_lengths)}")
    self.eval_tokens, self.eval_windows = eval_tokens, eval_windows
    self.eval_final_tokens, self.eval_batch_tokens = eval_final_tokens, eval_batch_tokens
    self.manifest = scan_corpus(corpus, corpus_glob, valid_fraction)
    # Bytes each split needs: a training window (+1 target), the longest evaluation window.
    self._min_train = self.train_max_length + 2
    self._min_valid = max(self.eval_lengths) + 2
    n_train, n_valid, _ = split_sizes(self.manifest, self._min_train, self._min_valid)
    if n_train < self._min_train or n_valid < self._min_valid:
      raise ConfigError("config.task.corpus",
                        f"{self.manifest.source!r} has {self.manifest.num_bytes:,} bytes: too few "
                        f"for training windows of {self.train_max_length} and validation windows "
                        f"of {max(self.eval_lengths)} bytes with valid_fraction={valid_fraction} "
                        f"({n_train:,} train / {n_valid:,} validation bytes); use a larger corpus "
                        "or shorter lengths")
    self._device: dict[str, jax.Array] = {}

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LanguageModelling":
    """The task of a run config; refuses an encoder and lengths that cannot be evaluated."""
    if "model" in config and not bool(config.model.causal):
      raise ConfigError("config.model.causal", "language modelling predicts the next byte, "
                        "which needs a causal decoder; set --config.model.causal=True")
    length = int(config.task.train_max_length)
    lengths = [length * m for m in parse_multipliers(_field(config, "eval_multipliers"))]
    if "eval" in config and max(lengths) > config.eval.max_length:
      raise ConfigError("config.eval.max_length",
                        f"language modelling evaluates at {', '.join(map(str, lengths))} bytes "
                        f"(config.task.eval_multipliers x train_max_length); set "
                        f"--config.eval.max_length={max(lengths)} so the scheme's limits are "
                        "checked up to the longest")
    return cls(str(_field(config, "corpus")), corpus_glob=str(_field(config, "corpus_glob")),
               valid_fraction=float(_field(config, "valid_fraction")), train_max_length=length,
               eval_lengths=lengths, eval_tokens=_field(config, "eval_tokens"),
               eval_windows=_field(config, "eval_windows"),
               eval_final_tokens=_field(config, "eval_final_tokens"),
               eval_batch_tokens=_field(config, "eval_batch_tokens"))

  # -- data

  @property
  def corpus(self) -> Corpus:
    """The corpus bytes, read on first use (and cached across tasks of one manifest)."""
    return _cached_corpus(self.manifest, self._min_train, self._min_valid)

  def device_data(self, split: str) -> jax.Array:
    """The ``"train"`` or ``"valid"`` bytes as one device uint8 array (put there once)."""
    if split not in self._device:
      with jax.ensure_compile_time_eval():  # a concrete array even when first asked while tracing
        self._device[split] = jnp.asarray(getattr(self.corpus, split))
    return self._device[split]

  def output_length(self, length):
    return length

  def sequence_length(self, length):
    return length

  def _sample_padded(self, rng: jax.Array, batch_size: int, length, max_length: int) -> dict:
    """Random training windows of ``max_length + 1`` bytes (drawn on the device)."""
    data = self.device_data("train")
    starts = jax.random.randint(rng, (batch_size,), 0, data.shape[0] - max_length)
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (max_length + 1,)))(starts)
    windows = windows.astype(jnp.int32)
    return {"input": windows[:, :-1], "target": windows[:, 1:]}

  def layout(self, sample: dict, length, *, causal: bool, padded_length: int) -> dict:
    """The model's sequence: bytes then PAD; every position ``< length`` predicts the next byte.

    The same keys as ``posenc.data.layout`` (``tokens``, ``targets``, ``loss_mask``,
    ``valid``, ``length``). ``causal`` must be True (``from_config`` refuses an encoder).
    """
    x, y = sample["input"], sample["target"]
    batch = x.shape[0]
    inside = padding.before(length, padded_length)
    take = lambda a: padding.take(a, padding.arange_row(padded_length))
    mask = jnp.broadcast_to(inside, (batch, padded_length))
    return {
        "tokens": jnp.where(inside, take(x) + NUM_SPECIAL, PAD).astype(jnp.int32),
        "targets": jnp.where(inside, take(y), 0).astype(jnp.int32),
        "loss_mask": mask,
        "valid": mask,
        "length": jnp.asarray(length, jnp.int32),
    }

  # -- evaluation

  def evaluate(self, setup, params, key: jax.Array, *, log: Callable[[str], None] | None = print
               ) -> dict:
    """Perplexity against evaluation length, both protocols (see the module docstring).

    ``setup`` is a ``posenc.setup.Setup``; one program per evaluation length.
    """
    from posenc import positions as positions_lib  # noqa: PLC0415 — keep task imports light

    valid = self.device_data("valid")
    n_valid = int(valid.shape[0])
    longest = max(self.eval_lengths)
    span = min(self.eval_tokens, n_valid - 1) // longest * longest
    ends = protocol2_ends(n_valid, longest, self.eval_windows)
    pos_fn = positions_lib.make(setup.config.positions, train=False)
    table1, table2 = {}, {}
    t0 = time.perf_counter()
    for length in self.eval_lengths:
      model = setup.model(setup.eval_bound(length))
      batch = max(1, self.eval_batch_tokens // length)
      apply_fn = lambda p, t, pos, v, model=model: model.apply({"params": p}, t, pos, v, train=False)
      program = nll_program(apply_fn, pos_fn, length, batch)
      k = jax.random.fold_in(key, length)
      s1 = score_windows(program, params, valid, protocol1_starts(span, length), batch, 0,
                         jax.random.fold_in(k, 1))
      s2 = score_windows(program, params, valid, protocol2_starts(ends, length), batch,
                         length - self.eval_final_tokens, jax.random.fold_in(k, 2))
      table1[length], table2[length] = summarize_nll(*s1), summarize_nll(*s2)
      if log:
        log(f"eval: L'={length}: non-overlapping ppl {table1[length]['perplexity']:.3f} "
            f"({table1[length]['bits_per_byte']:.3f} bpb), final {self.eval_final_tokens} tokens "
            f"ppl {table2[length]['perplexity']:.3f}; {time.perf_counter() - t0:.1f}s")
    train_len = self.train_max_length
    beyond = [table1[l]["bits_per_byte"] for l in self.eval_lengths if l > train_len]
    at_train = table1.get(train_len, table1[min(self.eval_lengths)])
    return {
        "per_length": {l: table1[l]["perplexity"] for l in self.eval_lengths},
        "in_range_score": at_train["bits_per_byte"],
        "out_of_range_score": float(np.mean(beyond)) if beyond else None,
        "eval_programs": len(self.eval_lengths),
        "lm": {
            "score": "bits per byte, protocol 1 (lower is better): in_range_score at L, "
                     "out_of_range_score the mean over L' > L",
            "train_length": train_len,
            "eval_lengths": list(self.eval_lengths),
            "nonoverlapping": {str(l): v for l, v in table1.items()},
            "final_tokens": {str(l): v for l, v in table2.items()},
            "protocol": {"nonoverlapping_tokens": span, "final_windows": int(len(ends)),
                         "final_tokens_per_window": self.eval_final_tokens},
        },
        "corpus": self.corpus.info(),
    }

  def plot(self, results: dict, plots_dir: str, title: str) -> None:
    """``plots/perplexity.png``: perplexity against evaluation length, both protocols."""
    plot_perplexity(results, os.path.join(plots_dir, "perplexity.png"), title)


def plot_perplexity(results: dict, path: str, title: str) -> None:
  """Perplexity (log scale) against evaluation length (log2), the training length marked."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  import matplotlib.ticker  # noqa: PLC0415

  from posenc import reporting  # noqa: PLC0415

  lm = results["lm"]
  fig, ax = plt.subplots(figsize=(7, 4))
  for key, label, marker in (("nonoverlapping", "non-overlapping windows (Press et al.)", "o"),
                             ("final_tokens", "same final tokens, growing context "
                              "(Kazemnejad et al.)", "s")):
    lengths = sorted(int(l) for l in lm[key])
    ax.plot(lengths, [lm[key][str(l)]["perplexity"] for l in lengths], marker=marker, label=label)
  ax.axvline(lm["train_length"], color="tab:green", ls="--", lw=1,
             label=f"training length {lm['train_length']}")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ticks = sorted({int(l) for key in ("nonoverlapping", "final_tokens") for l in lm[key]})
  ax.set_xticks(ticks, [str(t) for t in ticks])
  ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
  ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
  ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
  ax.set_xlabel("evaluation length (bytes)")
  ax.set_ylabel("perplexity (per byte)")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  reporting._save(fig, path)  # noqa: SLF001 — the package's atomic figure writer
  plt.close(fig)


TASKS = (LanguageModelling,)
