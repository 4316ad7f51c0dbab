#!/usr/bin/env bash
# The READ workflow on the EC2 cluster of read-cluster.yaml, one Ray job per step:
# build shards -> train (alias `candidate`) -> evaluate -> promote (`champion` on improvement).
#
#   ray up -y infra/aws/read-cluster.yaml
#   ray dashboard infra/aws/read-cluster.yaml &          # forwards the job API to 127.0.0.1:8265
#   READ_BUCKET=my-bucket bash infra/aws/submit-jobs.sh  # from the repository root, at the tag the
#                                                        # cluster image was built from
#
# The raw upstream datasets sit on the head's disk at /data/raw (synced from s3://<bucket>/raw when
# the head starts; build_shards.py reads local folders, so run step 1 on the head, before GPU
# workers exist). Everything the steps produce goes to S3 (shards, Ray Train checkpoints) or to
# MLflow (runs, metrics, registered versions).
set -euo pipefail
: "${READ_BUCKET:?set READ_BUCKET to the S3 bucket that holds raw datasets, shards and checkpoints}"
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
shards="s3://${READ_BUCKET}/shards"

# 1. Shards: CPU work on the head, where the raw datasets are.
ray job submit --working-dir . -- \
  python pipelines/build_shards.py --dataset-root /data/raw --out "${shards}" \
  --datasets reason_seg refcoco refcoco+ refcocog

# 2. Training: 8 GPU workers (one p5.48xlarge or p4d.24xlarge node, started by the autoscaler).
ray job submit --working-dir . -- \
  python pipelines/train.py --config configs/read-7b.yaml \
  data.shards="${shards}" \
  train.storage_path="s3://${READ_BUCKET}/ray_results" \
  train.run_name=read-7b train.max_failures=3 \
  scaling.num_workers=8 scaling.use_gpu=true \
  mlflow.registered_model=read-7b

# 3. Evaluation of the new version (alias `candidate`) on the validation splits.
ray job submit --working-dir . -- \
  python pipelines/evaluate.py --model models:/read-7b@candidate \
  --protocol generate --config configs/read-7b.yaml \
  --data reason_seg/val refcoco/val "data.shards=${shards}"

# 4. Promotion: `champion` moves to the candidate only if it beats the champion's metric.
ray job submit --working-dir . -- \
  python pipelines/promote.py --config configs/read-7b.yaml --alias candidate \
  mlflow.registered_model=read-7b
