#!/usr/bin/env bash
# The `setup` of the task files in this folder, run by SkyPilot on every host from the
# synced working tree: a uv-managed Python (pyproject.toml asks for >= 3.11, whatever the
# image's python3 is), the pinned requirements, the accelerator's JAX at our jax's version,
# and the package.
#
#   bash scripts/launch/setup.sh tpu|cuda12|cpu
#
# IRL_LM_VENV (default ~/irl-lm-venv) is where it goes; scripts/launch/run.sh uses it.
set -euo pipefail

accelerator="${1:?usage: setup.sh tpu|cuda12|cpu}"
venv="${IRL_LM_VENV:-$HOME/irl-lm-venv}"
python_version="${IRL_LM_PYTHON:-3.11}"

jax_version="$(sed -n 's/^jax==//p' constraints.txt 2> /dev/null || true)"
if [ -z "$jax_version" ]; then
  echo "setup.sh: constraints.txt pins no jax (run from the repository root)" >&2
  exit 2
fi
case "$accelerator" in
  tpu | cuda12) jax="jax[$accelerator]==$jax_version" ;;
  cpu) jax="jax==$jax_version" ;;
  *)
    echo "setup.sh: unknown accelerator '$accelerator' (tpu, cuda12 or cpu)" >&2
    exit 2
    ;;
esac

if ! command -v uv > /dev/null; then
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet --user --break-system-packages uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv venv --allow-existing --python "$python_version" "$venv"
uv pip install --python "$venv/bin/python" -c constraints.txt -r requirements.txt "$jax"
uv pip install --python "$venv/bin/python" --no-deps -e .
"$venv/bin/python" -c 'import jax, sys; print("irl-lm setup: Python", sys.version.split()[0], "jax", jax.__version__)'
