#!/usr/bin/env bash
# The READ workflow on Kubernetes as a sequence of RayJobs, one short-lived Ray cluster per step:
#   00 base weights into the bucket -> 01 build shards -> 02 train (registers alias `candidate`)
#   -> 03 evaluate `candidate` (records its metrics and their data on the version)
#   -> 04 promote `candidate` to `champion` if it beats the current champion on the same data.
# What they run (preset, bucket, ...) comes from ConfigMap read-env (infra/kuberay/access.yaml).
# Each step starts only when the previous one SUCCEEDED; the first failure stops the sequence and
# prints where to look. Re-running the script re-runs every step; the steps themselves skip work
# whose inputs did not change (weights and shards are kept when unchanged, training resumes from
# its last checkpoint).
#
#   kubectl apply -f infra/kuberay/access.yaml        # once
#   bash infra/kuberay/workflow/run-workflow.sh       # from the repository root
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
namespace=read
poll_s=30

run_step() {
  local file="$1" name
  name="$(kubectl create --dry-run=client -o jsonpath='{.metadata.name}' -f "${here}/${file}")"
  echo "== ${file}: RayJob ${name}"
  kubectl -n "${namespace}" delete rayjob "${name}" --ignore-not-found --wait=true
  kubectl -n "${namespace}" apply -f "${here}/${file}"
  while true; do
    local deployment job
    deployment="$(kubectl -n "${namespace}" get rayjob "${name}" -o jsonpath='{.status.jobDeploymentStatus}')"
    job="$(kubectl -n "${namespace}" get rayjob "${name}" -o jsonpath='{.status.jobStatus}')"
    echo "   $(date -u +%H:%M:%S) deployment=${deployment:-Pending} job=${job:-Pending}"
    case "${deployment}" in
      Complete)
        if [ "${job}" = "SUCCEEDED" ]; then return 0; fi
        ;&
      Failed)
        echo "step ${file} failed (job status ${job:-unknown}); logs:" >&2
        echo "  kubectl -n ${namespace} logs job/${name}" >&2
        echo "  kubectl -n ${namespace} describe rayjob ${name}" >&2
        return 1
        ;;
    esac
    sleep "${poll_s}"
  done
}

run_step 00-fetch-weights.yaml
run_step 01-build-shards.yaml
run_step 02-train.yaml
run_step 03-evaluate.yaml
run_step 04-promote.yaml
echo "== workflow finished: see the champion alias in the MLflow registry"
