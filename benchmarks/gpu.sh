#!/usr/bin/env bash
# The GPU measurement of docs/performance.md ("GPU"), prepared so that a session lent a device machine (an
# H100 or H200 with Python 3.12, CUDA 13, PyTorch, timm and transformers, and no network) spends its device
# minutes measuring, not setting up. onnxruntime-gpu's wheel (~255 MB) is over the 64 MiB a device call may
# carry, so it travels in pieces, one per call, while the machine stays warm between calls:
#
#   bash benchmarks/gpu.sh fetch    # here: download the cp312 wheel, check its sha256, split it into .whl/
#   bash benchmarks/gpu.sh stash    # there, once per piece (carry .whl/<piece>): keep it in /tmp/gpu-wheel
#   bash benchmarks/gpu.sh run      # there, last (carry the last piece): join, check, install, measure
#
# `run` exports the random-weight DINOv2 ViT-S/14 and MobileCLIP-S2 image towers with the machine's own
# PyTorch (benchmarks/torch_networks.py), then times our dino and clip code path on the CUDA provider
# (benchmarks/bench_embeddings.py --device cuda: previews decoded on every core, io-binding, L2 norm) next
# to the network alone, and writes the table to $OUT/gpu_embeddings.md.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.31.1
WHEEL=onnxruntime_gpu-$VERSION-cp312-cp312-manylinux_2_28_x86_64.whl
SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7
PIECES=.whl
STASH=${GPU_STASH:-/tmp/gpu-wheel}

case "${1:-}" in
fetch)
    mkdir -p "$PIECES"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d "$PIECES/download" "onnxruntime-gpu==$VERSION"
    echo "$SHA256  $PIECES/download/$WHEEL" | sha256sum --check --quiet
    rm -f "$PIECES"/"$WHEEL".part-*
    split -b 58M "$PIECES/download/$WHEEL" "$PIECES/$WHEEL.part-"
    rm -rf "$PIECES/download"
    ls "$PIECES"
    ;;
stash)
    mkdir -p "$STASH"
    mv "$PIECES"/"$WHEEL".part-* "$STASH"/
    ls -l "$STASH"
    ;;
run)
    mkdir -p "$STASH"
    if compgen -G "$PIECES/$WHEEL.part-*" >/dev/null; then mv "$PIECES"/"$WHEEL".part-* "$STASH"/; fi
    cat "$STASH"/"$WHEEL".part-* >"$STASH/$WHEEL"
    echo "$SHA256  $STASH/$WHEEL" | sha256sum --check --quiet
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$STASH/$WHEEL"
    export PYTHONPATH=/tmp/site:$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
    out=${OUT:-/tmp/gpu-out}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())' |
        tee -a "$out/gpu.txt"
    python3 benchmarks/torch_networks.py dinov2_small /tmp/dinov2_small_random.onnx
    python3 benchmarks/torch_networks.py mobileclip_s2_image /tmp/mobileclip_s2_image_random.onnx
    python3 benchmarks/bench_embeddings.py --device cuda --threads "$(nproc)" --images 2048 --batches 64,256 \
        --dino /tmp/dinov2_small_random.onnx --clip /tmp/mobileclip_s2_image_random.onnx | tee "$out/gpu_embeddings.md"
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d'
    exit 2
    ;;
esac
