#!/usr/bin/env bash
# The READ workflow on the EC2 cluster of read-cluster.yaml, one Ray job per step:
#   weights -> shards -> train (alias `candidate`) -> evaluate (records the evidence on the
#   version) -> promote (`champion` moves only on improvement, on the same evaluation data).
#
#   ray up -y infra/aws/read-cluster.yaml
#   ray dashboard infra/aws/read-cluster.yaml &          # forwards the job API to 127.0.0.1:8265
#   export RAY_AUTH_TOKEN=...                            # the cluster's token (infra/README.md)
#   READ_BUCKET=my-bucket bash infra/aws/submit-jobs.sh  # from the repository root, at the tag the
#                                                        # cluster image was built from
#
# Settings (environment variables of this shell):
#   READ_BUCKET    S3 bucket, or bucket/prefix, for weights, shards, checkpoints, evaluation output
#   READ_PRESET    preset, relative to the repository root (default configs/read-7b.yaml): it
#                  decides the model, the data, the workers and the registered model's name
#   READ_RAW       upstream dataset folders on the head (default /data/raw, synced from S3)
#   READ_TRAIN_ARGS  extra key=value overrides for the training step (default: none), e.g.
#                  "train.max_steps=2000 train.run_name=read-7b-short"
#   READ_JOB_ENV   names of variables of this shell to send with every job (default: none), e.g.
#                  "MLFLOW_TRACKING_URI" to use another MLflow server than the nodes'. Settings
#                  only: credentials stay on the nodes (instance profile, /etc/read/node.env).
#   RAY_ADDRESS    the job API (default http://127.0.0.1:8265, the `ray dashboard` tunnel)
#
# Every step skips work that is already done: stored weights and built shards are kept when their
# inputs did not change, and training resumes from its last checkpoint.
set -euo pipefail
: "${READ_BUCKET:?set READ_BUCKET to the S3 bucket (or bucket/prefix) for weights, shards and checkpoints}"
preset="${READ_PRESET:-configs/read-7b.yaml}"
raw="${READ_RAW:-/data/raw}"
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
root="s3://${READ_BUCKET}"
read -r -a train_args <<< "${READ_TRAIN_ARGS:-}"  # split on blanks, never globbed
# Every dataset a preset of this repository trains or evaluates on (tests/infra check this list).
datasets=(reason_seg refcoco refcoco+ refcocog fprefcoco)
# shellcheck disable=SC2086
runtime_env="$(python3 -c 'import json, os, sys
print(json.dumps({"env_vars": {n: os.environ[n] for n in sys.argv[1:] if os.environ.get(n)}}))' ${READ_JOB_ENV:-})"

submit() {
  ray job submit --working-dir . --runtime-env-json "${runtime_env}" -- "$@"
}

# 0. Base weights into the bucket, with checksums (CPU, on the head; a no-op once stored).
submit python pipelines/fetch_weights.py --config "${preset}" weights.store="${root}/weights"

# 1. Shards: CPU work on the head, where the raw datasets are.
submit python pipelines/build_shards.py --dataset-root "${raw}" --out "${root}/shards" \
  --datasets "${datasets[@]}"

# 2. Training on the preset's workers (read-7b: 8 GPUs; the autoscaler starts a p5.48xlarge or a
#    p4d.24xlarge); each node copies the base weights from the bucket once.
submit python pipelines/train.py --config "${preset}" \
  data.shards="${root}/shards" \
  train.storage_path="${root}/ray_results" \
  weights.store="${root}/weights" \
  "${train_args[@]}"

# 3. Evaluation of the new version on the validation splits, one GPU per model actor; its
#    metrics and the data they were computed on are recorded on the version (--tag-version).
submit python pipelines/evaluate.py --model @candidate --config "${preset}" --tag-version \
  --data reason_seg/val refcoco/val data.shards="${root}/shards" \
  eval.output="${root}/eval" \
  weights.store="${root}/weights"

# 4. Promotion: `champion` moves to the candidate only if it beats the champion's metric.
submit python pipelines/promote.py --config "${preset}" --alias candidate
