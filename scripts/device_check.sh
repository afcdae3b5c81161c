#!/usr/bin/env bash
# The accelerator check: install, the accelerator-path tests on the device, the benchmark on the
# paper preset and one short 8-seed vmapped run; prints a table (scripts/device_report.py).
#
#   scripts/device_check.sh                 # on a GPU (or TPU) machine: under 10 minutes on one GPU
#   scripts/device_check.sh --cpu           # the same steps with tiny settings on a CPU (a dry run)
#
# Options:
#   --cpu            tiny settings, JAX on the CPU (checks the script itself, not a device)
#   --no-install     skip the pip install (an environment that already has posenc)
#   --wheels DIR     install offline from the wheels in DIR (a machine without network)
#   --no-tests       skip the tests
#   --out DIR        where the log and device_report.json go (default: device_check_out)
#   --               everything after it goes to scripts/device_report.py
#
# On a GPU, JAX with CUDA must be installed (pip install -U "jax[cuda12]"); the script stops
# with that advice when JAX sees no accelerator. Steps and their time limits on one H200-class
# GPU: install (~1 min with a network), tests (~2 min), benchmark of sinusoidal, rope, alibi
# and floater in float32 and bfloat16 (~4 min), the seeded run (~2 min).
set -euo pipefail

cd "$(dirname "$0")/.."
cpu=0; install=1; tests=1; wheels=""; out="device_check_out"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) cpu=1 ;;
    --no-install) install=0 ;;
    --no-tests) tests=0 ;;
    --wheels) wheels="$2"; shift ;;
    --out) out="$2"; shift ;;
    --) shift; break ;;
    *) echo "device_check: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
log="$out/device_check.log"
: > "$log"
export PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)" | tee -a "$log"; }
t0=$(date +%s)

if [[ $cpu == 1 ]]; then
  export JAX_PLATFORMS=cpu
fi

if [[ $install == 1 ]]; then
  step "install"
  if [[ -n $wheels ]]; then
    "$py" -m pip install -q --no-index --find-links "$wheels" -e ".[dev]" 2>&1 | tee -a "$log"
  elif ! "$py" -m pip install -q -e ".[dev]" 2>&1 | tee -a "$log"; then
    # No network: the dependencies may already be there; install posenc itself only.
    "$py" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tee -a "$log"
  fi
fi

step "environment"
"$py" - <<'EOF' 2>&1 | tee -a "$log"
import jax
print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
EOF
backend=$("$py" -c "import jax; print(jax.default_backend())" 2>/dev/null)
if [[ $cpu == 0 && $backend == cpu ]]; then
  echo "device_check: JAX sees no accelerator. Install a JAX with CUDA (pip install -U \"jax[cuda12]\")" \
       "or the TPU build, or run with --cpu for a dry run." | tee -a "$log" >&2
  exit 3
fi

if [[ $tests == 1 ]]; then
  step "tests on $backend"
  if [[ $cpu == 1 ]]; then
    # A sample of the accelerator-path tests: the full file runs in the project's test suite.
    sel=(-k "cover_every or computes_in_bfloat16 or (fused and (sinusoidal or rope)) or (bfloat16_is_finite and (alibi or rope))")
  else
    # The tests' conftest picks the CPU unless JAX_PLATFORMS is set: set but empty, JAX takes
    # its default (the accelerator). float32 matmuls at full precision (not TF32), as the
    # tests' float32 tolerances assume.
    export JAX_PLATFORMS="" JAX_DEFAULT_MATMUL_PRECISION=highest
    sel=()
  fi
  "$py" -m pytest -q -p no:cacheprovider tests/test_accelerator_paths.py "${sel[@]}" 2>&1 | tee -a "$log"
  unset JAX_DEFAULT_MATMUL_PRECISION
fi

step "benchmark and seeded run"
report_args=(--out="$out/device_report.json")
[[ $cpu == 1 ]] && report_args+=(--cpu)
"$py" scripts/device_report.py "${report_args[@]}" "$@" 2>&1 | tee -a "$log"

step "done in $(( $(date +%s) - t0 )) s; log: $log, report: $out/device_report.json"
