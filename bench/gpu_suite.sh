#!/usr/bin/env bash
# One prepared GPU run for a lent machine: READ-7B training step (samples/s, tokens/s, peak
# memory, MFU), SasP+DtoC share of a forward, batched KV-cache generation vs batch-1 no-cache.
# Prints one table; finishes in under 8 minutes on one H100/H200 (a hard limit of SUITE_LIMIT_S).
#
#   bash bench/gpu_suite.sh --prepare   # once, where PyPI is reachable: fill bench/vendor/
#   bash bench/gpu_suite.sh             # on the GPU machine (bench/vendor/ travels with the tree)
#   bash bench/gpu_suite.sh --smoke     # the same code path on a CPU, tiny preset (no GPU needed)
#
# The GPU image has torch, transformers and peft but not necessarily the versions this project
# pins, nor segment-anything (and no ray / mlflow, which the suite never imports). The pinned
# pure-Python wheels in bench/vendor/ are unpacked into a temporary folder that goes first on
# PYTHONPATH; torchvision / PIL, if absent, get announced stand-ins (bench/gpu_fallbacks.py).
#
# Exit codes: 0 the table was printed; 77 no CUDA GPU visible (nothing measured); 2 bench/vendor
# is incomplete (run --prepare); 124 the time limit was hit; anything else: a failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
VENDOR=bench/vendor
SUITE_LIMIT_S=${SUITE_LIMIT_S:-470}
WHEELS=(transformers==5.24.0 huggingface_hub==1.33.0 peft==0.21.2 accelerate==1.15.0
        segment-anything==1.0)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$VENDOR"
    exec "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$VENDOR" "${WHEELS[@]}"
fi

smoke=0
for arg in "$@"; do [[ "$arg" == "--smoke" ]] && smoke=1; done
if [[ $smoke == 0 ]] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_suite: no CUDA GPU visible to $PYTHON; nothing measured (exit 77)."
    echo "gpu_suite: 'bash bench/gpu_suite.sh --smoke' runs the same code path on the CPU."
    exit 77
fi

site=$(mktemp -d "${TMPDIR:-/tmp}/read-gpu-suite.XXXXXX")
trap 'rm -rf "$site"' EXIT
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}; version=${spec##*==}
    wheel=$(ls "$VENDOR"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -n 1)
    if [[ -z "$wheel" ]]; then
        echo "gpu_suite: $VENDOR has no wheel for $spec; run 'bash bench/gpu_suite.sh --prepare' where PyPI is reachable (exit 2)." >&2
        exit 2
    fi
    "$PYTHON" -m zipfile -e "$wheel" "$site" || exit 2
done
echo "gpu_suite: using ${WHEELS[*]} from $VENDOR"

export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout --signal=TERM "$SUITE_LIMIT_S" "$PYTHON" bench/gpu_suite.py "$@"
status=$?
[[ $status == 124 ]] && echo "gpu_suite: stopped at the ${SUITE_LIMIT_S} s limit (exit 124)." >&2
exit $status
