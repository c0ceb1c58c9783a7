#!/usr/bin/env bash
# Send a study to a running Ray cluster:
#   ray_jobs/submit.sh http://HEAD:8265 configs/paper.yaml --out /shared/runs/paper [--set KEY=VALUE ...]
# The repository is the job's working_dir (files ignored by git stay behind). The cluster's nodes
# must have biasamp's dependencies (cluster/ installs them); pass --runtime-env-json through
# RUNTIME_ENV to add more. Authentication: RAY_AUTH_TOKEN or ~/.ray/auth_token on this machine.
# Secrets are not sent: W&B reads WANDB_API_KEY from the cluster nodes' own environment.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 ADDRESS CONFIG [biasamp run options]" >&2; exit 2; }
address=$1 config=$2
shift 2
cd "$(dirname "$0")/.."
command -v ray >/dev/null 2>&1 || { echo "error: 'ray' is not on PATH; it submits the job: pip install 'ray[default]'" >&2; exit 2; }
# The config is checked here first (keys, values, arms); its paths, models and resources are checked
# by the job's driver on the cluster, where they live, before any trajectory starts.
python -m biasamp.cli validate --config-only "$config" "$@" || exit 2
exec ray job submit --address "$address" --working-dir . ${RUNTIME_ENV:+--runtime-env-json "$RUNTIME_ENV"} \
    -- python ray_jobs/run_study.py "$config" "$@"
