"""Byte-level language modelling: corpus, split, the two evaluation protocols, a smoke run."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from posenc import data as data_lib
from posenc import tasks, train
from posenc.errors import ConfigError
from posenc.tasks import lm
from tests import helpers

TEXT = (b"def add(a, b):\n    \"\"\"Adds two numbers.\"\"\"\n    return a + b\n\n" * 120)


@pytest.fixture
def corpus_file(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_bytes(TEXT)
  return str(path)


def _tree(tmp_path, n=40):
  root = tmp_path / "tree"
  for i in range(n):
    sub = root / f"pkg{i % 3}"
    sub.mkdir(parents=True, exist_ok=True)
    (sub / f"m{i}.py").write_bytes(f"# module {i}\n".encode() + TEXT[: 200 + 37 * i])
  (root / "notes.txt").write_bytes(b"not matched by *.py\n")
  return root


def test_registered_as_a_byte_task():
  cls = tasks.registry()["lm"]
  assert cls.level == "lm" and cls.input_vocab_size == 256 and cls.output_vocab_size == 256


def test_protocol1_windows_cover_each_validation_token_once():
  span = 16 * 64
  for length in (16, 32, 64, 128, 256):
    starts = lm.protocol1_starts(span, length)
    predicted = np.concatenate([np.arange(s + 1, s + length + 1) for s in starts])
    np.testing.assert_array_equal(np.sort(predicted), np.arange(1, span + 1))


def test_protocol2_scores_the_same_tokens_at_every_length():
  n_valid, lengths, final = 5000, (16, 32, 64, 128), 8
  ends = lm.protocol2_ends(n_valid, max(lengths), 20)
  assert len(ends) == 20 and ends.min() >= max(lengths) and ends.max() <= n_valid - 1
  scored = None
  for length in lengths:
    starts = lm.protocol2_starts(ends, length)
    assert starts.min() >= 0 and (starts + length).max() <= n_valid - 1  # window + next byte fit
    # Predictions length - final .. length - 1 of window s predict bytes s + i + 1.
    now = [tuple(s + i + 1 for i in range(length - final, length)) for s in starts]
    assert now == [tuple(range(e - final + 1, e + 1)) for e in ends]
    scored = scored or now
    assert now == scored


def test_manifest_hash_is_deterministic_and_tracks_the_files(tmp_path):
  root = _tree(tmp_path)
  a = lm.scan_corpus(str(root), "*.py")
  b = lm.scan_corpus(str(root), "*.py")
  assert a.sha256 == b.sha256 and len(a.files) == 40
  assert [rel for rel, _ in a.files] == sorted(rel for rel, _ in a.files)
  assert all(rel.endswith(".py") for rel, _ in a.files)
  assert lm.manifest_hash(reversed(a.files)) == a.sha256  # over sorted entries
  (root / "pkg0" / "m0.py").write_bytes(b"changed size")
  assert lm.scan_corpus(str(root), "*.py").sha256 != a.sha256


def test_path_hash_split_is_disjoint_and_complete(tmp_path):
  root = _tree(tmp_path)
  manifest = lm.scan_corpus(str(root), "*.py", valid_fraction=0.25)
  corpus = lm.load_corpus(manifest)
  assert corpus.split == "path-hash"
  valid = {rel for rel, _ in manifest.files if lm.is_validation(rel, 0.25)}
  train_files = {rel for rel, _ in manifest.files} - valid
  assert valid and train_files and not valid & train_files
  sizes = dict(manifest.files)
  assert corpus.valid.size == sum(sizes[r] for r in valid)
  assert corpus.train.size == sum(sizes[r] for r in train_files)
  assert corpus.train.size + corpus.valid.size == manifest.num_bytes
  # The default corpus (the stdlib sources): listed, not read; about 10% of files held out.
  std = lm.scan_corpus("")
  held = [rel for rel, _ in std.files if lm.is_validation(rel, 0.1)]
  assert 0.05 < len(held) / len(std.files) < 0.15
  assert not any("site-packages" in rel for rel, _ in std.files)
  assert lm.scan_corpus("").sha256 == std.sha256


def test_single_file_splits_by_bytes(corpus_file):
  corpus = lm.load_corpus(lm.scan_corpus(corpus_file))
  assert corpus.split == "bytes"
  np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.valid]),
                                np.frombuffer(TEXT, np.uint8))
  assert corpus.valid.size == round(len(TEXT) * 0.1)


def _smoke(**overrides):
  return helpers.config("lm.sinusoidal", "smoke", **overrides)


def test_bad_corpus_or_mode_fails_in_setup(tmp_path, corpus_file):
  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  no_match = tmp_path / "no_match"
  no_match.mkdir()
  (no_match / "a.txt").write_bytes(b"text")
  for corpus in (str(tmp_path / "missing"), str(empty), str(no_match)):
    with pytest.raises(ConfigError) as e:
      train.setup(_smoke(**{"task.corpus": corpus}))
    assert e.value.field == "config.task.corpus", corpus
  tiny = tmp_path / "tiny.txt"
  tiny.write_bytes(b"x" * 50)
  with pytest.raises(ConfigError, match="too few"):
    train.setup(_smoke(**{"task.corpus": str(tiny)}))
  with pytest.raises(ConfigError) as e:
    train.setup(_smoke(**{"task.corpus": corpus_file, "model.causal": False}))
  assert e.value.field == "config.model.causal"
  with pytest.raises(ConfigError) as e:
    train.setup(_smoke(**{"task.corpus": corpus_file, "eval.max_length": 32}))
  assert e.value.field == "config.eval.max_length"
  assert train.setup(_smoke(**{"task.corpus": corpus_file})).task.name == "lm"


def test_training_windows_and_layout(corpus_file):
  task = train.setup(_smoke(**{"task.corpus": corpus_file})).task
  out = task.sample_padded(jax.random.key(0), 4, jnp.int32(10), 16)
  x, y = np.asarray(out["input"]), np.asarray(out["target"])
  assert x.shape == y.shape == (4, 16)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # the target is the next byte
  text = task.corpus.train.tobytes()
  for row in np.concatenate([x[:, :1], y], axis=1):
    assert bytes(row.astype(np.uint8).tolist()) in text  # consecutive training bytes
  lay = task.layout(out, jnp.int32(10), causal=True, padded_length=24)
  assert set(lay) == {"tokens", "targets", "loss_mask", "valid", "length"}
  inside = np.arange(24) < 10
  np.testing.assert_array_equal(np.asarray(lay["tokens"])[:, :10], x[:, :10] + data_lib.NUM_SPECIAL)
  assert (np.asarray(lay["tokens"])[:, 10:] == data_lib.PAD).all()
  np.testing.assert_array_equal(np.asarray(lay["targets"])[:, :10], y[:, :10])
  for k in ("loss_mask", "valid"):
    np.testing.assert_array_equal(np.asarray(lay[k]), np.broadcast_to(inside, (4, 24)))


def test_uniform_model_has_perplexity_256():
  data = jnp.asarray(np.frombuffer(TEXT, np.uint8))
  uniform = lambda params, tokens, positions, valid: jnp.zeros(tokens.shape + (256,))
  positions = lambda key, b, length, padded: jnp.arange(padded)[None]
  for length, final in ((16, 0), (64, 56)):
    program = lm.nll_program(uniform, positions, length, 3)
    starts = lm.protocol1_starts(1000, length)
    total, count = lm.score_windows(program, None, data, starts, 3, final, jax.random.key(0))
    assert count == len(starts) * (length - final)
    out = lm.summarize_nll(total, count)
    assert out["perplexity"] == pytest.approx(256.0, rel=1e-5)
    assert out["bits_per_byte"] == pytest.approx(8.0, rel=1e-6)


def test_smoke_run_end_to_end(tmp_path, corpus_file):
  results = helpers.run_smoke(tmp_path, "lm.sinusoidal", plots=True, **{"task.corpus": corpus_file})
  assert results["task"] == "lm" and results["mode"] == "decoder"
  assert sorted(int(k) for k in results["per_length"]) == [16, 32, 64]
  assert all(1.0 < v < 1e4 and math.isfinite(v) for v in results["per_length"].values())
  table1, table2 = results["lm"]["nonoverlapping"], results["lm"]["final_tokens"]
  assert {v["tokens"] for v in table1.values()} == {256}  # the same span at every length
  assert len({v["tokens"] for v in table2.values()}) == 1  # the same final tokens
  for length, row in table1.items():
    assert row["perplexity"] == pytest.approx(2 ** row["bits_per_byte"], rel=1e-6)
    assert results["per_length"][length] == row["perplexity"]
  assert results["in_range_score"] == table1["16"]["bits_per_byte"]
  assert results["out_of_range_score"] == pytest.approx(
      np.mean([table1["32"]["bits_per_byte"], table1["64"]["bits_per_byte"]]))
  corpus = results["corpus"]
  assert corpus["manifest_sha256"] == lm.manifest_hash([("corpus.txt", len(TEXT))])
  assert corpus["split"] == "bytes" and corpus["bytes"] == len(TEXT)
  assert results["eval_programs"] == 3
  wd = tmp_path / "lm.sinusoidal-run"
  assert os.path.exists(wd / "plots" / "perplexity.png") and os.path.exists(wd / "DONE")
