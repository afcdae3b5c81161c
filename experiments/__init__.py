"""Entry points: ``experiments.run`` (one run), ``experiments.sweep`` (many), ``experiments.collect``.

Before anything imports equinox (diffrax's base, for FLOATER): diffrax validates its inputs with
``equinox`` checks that equinox lowers as host callbacks unless ``EQX_ON_ERROR=nan``. posenc's
FLOATER builds those inputs itself (a fixed time grid), reports its own failures as values
(``posenc.encodings.floater.solve_with_status``) and raises them explicitly, so in these entry
points the checks become NaN guards instead: no host callback in any traced program. That
matters twice: JAX runs a program with a host callback synchronously (the Python loop cannot
queue the next training step while one computes; FLOATER's step went from 1.14–1.20× to
1.09–1.13× sinusoidal's on a 2-core CPU), and its persistent compilation cache does not store
such programs. A value set in the environment is kept.
"""

import os

os.environ.setdefault("EQX_ON_ERROR", "nan")
