"""Sweep configs: ``get_config(arg)`` (the base, with presets) and ``get_sweep(config)`` (the points).

How points are resolved (the ``"scheme"`` key, precedence of command-line overrides, workdir
names) is documented in :mod:`experiments.sweeping`. Run one with::

  python -m experiments.sweep --config=configs/sweeps/chomsky.py:smoke --root=/tmp/sweep
  python -m experiments.sweep --config=configs/sweeps/chomsky.py --count
  python -m experiments.run --config=configs/sweeps/chomsky.py:paper --sweep_index=17
"""
