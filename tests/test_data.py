"""The padded layout and length buckets."""

import jax
import numpy as np

from posenc import data, positions, tasks


def test_layout_encoder_and_decoder():
  task = tasks.get("reverse_string")
  sample = task.sample(jax.random.PRNGKey(0), 3, 4)
  x, y = np.asarray(sample["input"]), np.asarray(sample["target"])
  for causal in (False, True):
    b = {k: np.asarray(v) for k, v in data.layout(task, sample, 4, causal=causal, padded_length=12).items()}
    np.testing.assert_array_equal(b["tokens"][:, :4], x + data.NUM_SPECIAL)
    np.testing.assert_array_equal(b["targets"][:, 4:8], y)
    assert b["loss_mask"][:, 4:8].all() and not b["loss_mask"][:, :4].any() and not b["loss_mask"][:, 8:].any()
    assert b["valid"][:, :8].all() and not b["valid"][:, 8:].any()
    assert (b["tokens"][:, 8:] == data.PAD).all()
    if causal:  # teacher forcing: SEP, then the answer shifted right
      assert (b["tokens"][:, 4] == data.SEP).all()
      np.testing.assert_array_equal(b["tokens"][:, 5:8], y[:, :3] + data.NUM_SPECIAL + task.input_vocab_size)
    else:
      assert (b["tokens"][:, 4:8] == data.BLANK).all()


def test_layout_with_a_traced_length_and_padded_sample_matches_the_static_one():
  task = tasks.get("reverse_string")
  sample = task.sample(jax.random.PRNGKey(0), 2, 5)
  padded = {k: jax.numpy.pad(v, ((0, 0), (0, 3))) for k, v in sample.items()}
  static = data.layout(task, sample, 5, causal=True, padded_length=16)
  traced = jax.jit(lambda s, l: data.layout(task, s, l, causal=True, padded_length=16))(padded, 5)
  for k in static:
    np.testing.assert_array_equal(static[k], traced[k], err_msg=k)


def test_buckets_cover_every_length_once_with_few_programs():
  task = tasks.get("reverse_string")
  bs = data.buckets(task, range(41, 501), 8)
  assert len(bs) <= 8
  covered = [l for lengths, _ in bs for l in lengths]
  assert covered == list(range(41, 501))
  for lengths, padded in bs:
    assert padded % 8 == 0 and padded >= data.total_length(task, max(lengths))
    assert padded < 1.5 * data.total_length(task, max(lengths)) + 8


def test_evaluation_buckets_pad_no_more_than_the_geometric_split():
  """Evaluation scores each length on the same samples: its split (data.eval_buckets) has the
  fewest padded tokens summed over the lengths, never more than the geometric one's."""
  task = tasks.get("reverse_string")
  padded_tokens = lambda plan: sum(len(lengths) * p for lengths, p in plan)
  for lengths, n in ((range(1, 49), 2), (range(41, 501), 8), (range(1, 11), 3), (range(5, 6), 4)):
    split, geometric = data.eval_buckets(task, lengths, n), data.buckets(task, lengths, n)
    assert [l for g, _ in split for l in g] == list(lengths) and len(split) <= n
    assert all(p % 8 == 0 and p >= data.total_length(task, max(g)) for g, p in split)
    assert padded_tokens(split) <= padded_tokens(geometric)
  # the atlas's evaluation, 1-48 in 2 buckets: halves, against 1-6 and 7-48 padded to 96
  assert [(g[0], g[-1], p) for g, p in data.eval_buckets(task, range(1, 49), 2)] == [
      (1, 24, 48), (25, 48, 96)]
  assert padded_tokens(data.buckets(task, range(1, 49), 2)) == 4128
  # beyond data.MAX_SPLIT_LENGTHS lengths (the table grows with their square): geometric
  many = range(1, data.MAX_SPLIT_LENGTHS + 2)
  assert data.eval_buckets(task, many, 8) == data.buckets(task, many, 8)


def test_batch_fn_switches_lengths_in_one_program():
  task = tasks.get("parity_check")
  sampler = positions.make(positions_cfg(), train=True)
  fn = jax.jit(data.make_batch_fn(task, sampler, batch_size=2, lengths=(3, 5, 7),
                                  padded_length=8, causal=False))
  for i, l in enumerate((3, 5, 7)):
    b = fn(jax.random.PRNGKey(1), i)
    assert int(b["length"]) == l
    assert int(np.asarray(b["valid"]).sum(axis=1)[0]) == l + 1
  assert fn._cache_size() == 1


def test_scores_ignore_unscored_tokens():
  import jax.numpy as jnp
  batch = {"targets": jnp.array([[0, 1, 1, 0]]), "loss_mask": jnp.array([[False, True, True, False]])}
  logits = jax.nn.one_hot(jnp.array([[1, 1, 0, 1]]), 2)
  seq, has = data.sequence_scores(logits, batch)
  assert float(seq[0]) == 0.5 and bool(has[0])


def positions_cfg():
  import ml_collections
  return ml_collections.ConfigDict(dict(kind="contiguous", max_position=2048, per_example=True,
                                        offset=0, random_offset=False, eval="same"))
