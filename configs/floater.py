"""floater: see posenc/encodings/floater.py. Presets as in configs/base.py.

* default — base's CPU preset (same model, steps and evaluation as configs/sinusoidal.py, so the
  two compare directly); FLOATER with its defaults: q/k/v injection on top of the sinusoidal
  input, ``flow=auto`` (the paper's unconstrained flow, ``free``, here), adaptive Tsit5 (rtol 1e-3,
  atol 1e-6), Δt = 0.01, backprop through the solver.
* smoke   — base's smoke preset.
* paper   — base's paper protocol with the official solver settings: torchdiffeq's RK4 at step Δt/5 and the adjoint method (xuanqing94/FLOATER, fairseq/models/flow_transformer.py:
  ``odeint_adjoint``, ``method="rk4"``, ``step_size=time_dt/5``).

The paper's results all fine-tune from a trained sinusoidal Transformer. Warm start from a
sinusoidal run (parameters copied by path; FLOATER's own ``encoding/ode_*`` stay fresh; the
sinusoidal run's q/k/v projection biases are dropped, since FLOATER's terms replace them):

  python -m experiments.run --config=configs/sinusoidal.py --workdir=/tmp/sin
  python -m experiments.run --config=configs/floater.py --config.init.from_workdir=/tmp/sin \\
      --workdir=/tmp/floater-from-sin

The paper's conceptual form (an additive per-layer input instead of q/k/v biases):
``--config.encoding.injection=layer_input``.

Flow forms (``config.encoding.flow``; see the module docstring): ``decay``
(``|p_i| <= max(|p_i(0)|, c/λ)`` at every position), ``tanh`` (speed ``|dp_i/dt| <= c``),
``sphere`` (``‖p(t)‖ = ‖p(0)‖``), with ``c = encoding.flow_speed``, ``λ = encoding.flow_decay``;
``free`` is the paper's unconstrained ``h``. The default, ``auto``, is ``free`` while the
training positions stay within the time the paper fits it over (``(positions − 1)·Δt <= 2.55``,
``floater.FREE_HORIZON``: every preset's contiguous positions) and ``decay`` beyond, announced in
the log: randomized positions (``--config.positions.kind=randomized``) or random offsets train
on positions up to ``positions.max_position`` (t = 20.47 at 2048), where the free flow grows the
state a million-fold before the first step and training diverges. ``results.json`` records
the trained trajectory's growth at the longest evaluated position (``encoding_report``).
"""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg, scheme="floater")
  if c.preset == "paper":
    c.encoding.method = "rk4"
    c.encoding.adjoint = "backsolve"
    # flow stays "auto": the paper's unconstrained h on its contiguous positions (t <= 0.8)
  return c
