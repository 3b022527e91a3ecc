#!/usr/bin/env bash
# The `run` of the task files in this folder, on every host: one `irl_lm.main` process a host
# (the point's arguments in IRL_LM_ARGS, one line of `irl_lm.sweep --print_commands`), or with
# IRL_LM_SWEEP_ARGS a whole sweep on this one machine (`irl_lm.sweep`, IRL_LM_PARALLEL points
# at a time, each with its share of the GPUs).
#
# Process 0 appends its log to the point's WORKDIR/log.txt when the run ends (the sweep does
# the same for each of its points).
set -euo pipefail

venv="${IRL_LM_VENV:-$HOME/irl-lm-venv}"
export PATH="$HOME/.local/bin:$PATH"
# shellcheck disable=SC1091
source "$venv/bin/activate"

if [ -n "${IRL_LM_SWEEP_ARGS:-}" ]; then
  eval "exec python -m irl_lm.sweep --parallel=${IRL_LM_PARALLEL:-1} $IRL_LM_SWEEP_ARGS"
fi
if [ -z "${IRL_LM_ARGS:-}" ]; then
  echo "set the point's irl_lm.main arguments: --env IRL_LM_ARGS='--config=... --workdir=gs://...'" >&2
  exit 2
fi
eval "exec python -m irl_lm.main --jax_distributed --log_to_workdir $IRL_LM_ARGS"
