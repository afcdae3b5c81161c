"""Sinusoidal encoding: the interleaved table and its rotation properties (Vaswani et al. 2017)."""

import math

import jax.numpy as jnp
import numpy as np

from posenc.encodings import sinusoidal


def test_table_layout_matches_the_paper_formula():
  pos = np.arange(50)
  d = 16
  got = np.asarray(sinusoidal.table(pos, d))
  for k in (0, 1, 7, 49):
    for m in range(d // 2):
      w = 10000.0 ** (-2 * m / d)
      assert math.isclose(got[k, 2 * m], math.sin(k * w), abs_tol=1e-5)
      assert math.isclose(got[k, 2 * m + 1], math.cos(k * w), abs_tol=1e-5)


def test_shift_is_a_block_rotation():
  d = 32
  table = sinusoidal.table(jnp.arange(200), d)
  for delta in (1, 5, 37):
    m = sinusoidal.rotation(delta, d)
    np.testing.assert_allclose(table[:-delta] @ m.T, table[delta:], atol=2e-4)


def test_dot_product_depends_only_on_offset_and_norm_is_half_width():
  d = 64
  t = np.asarray(sinusoidal.table(np.arange(300), d), np.float64)
  gram = t @ t.T
  np.testing.assert_allclose(np.diag(gram), d / 2, rtol=1e-5)
  for offset in (0, 3, 40):
    diag = np.diagonal(gram, offset)
    np.testing.assert_allclose(diag, diag[0], atol=2e-3)


def test_batched_positions_and_base():
  pos = jnp.array([[0, 2], [5, 9]])
  got = sinusoidal.table(pos, 8, base=100.0)
  assert got.shape == (2, 2, 8) and got.dtype == jnp.float32
  np.testing.assert_allclose(got[1, 1, 2], math.sin(9 * 100.0 ** (-2 / 8)), atol=1e-6)
