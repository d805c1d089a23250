#!/usr/bin/env bash
# bench/gpu.py on a lent GPU machine, which has no network and no Prefect, Zarr or pydantic
# (../shared/STACK_FACTS.md). Two steps:
#
#   bench/gpu.sh pack            # here: fill bench/out/carry and bench/out/KernelGAN (both ignored by git), ~50 MB
#   bench/gpu.sh run [ARGS...]   # there, in the repository root: unpack, install, run bench/gpu.py ARGS
#
# The device call carries both folders: carry=["bench/out/carry", "bench/out/KernelGAN"],
# command "bash bench/gpu.sh run --out $OUT" (with the working tree, about 56 MB of the 64 MiB).
# pack needs: .venv (pip), REALSR_WEIGHTS_DIR (default ../shared/weights), ../shared/tools/pack_weights.py
# and KERNELGAN_REPO, a checkout of sefibk/KernelGAN (its code is never committed here).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=bench/out/carry

pack() {
    local weights=${REALSR_WEIGHTS_DIR:-../shared/weights} tools=${PACK_WEIGHTS:-../shared/tools/pack_weights.py}
    rm -rf "$CARRY" && mkdir -p "$CARRY/whl" "$CARRY/weights"
    # BasicSR, the reference trainer: an sdist, built here into a pure-Python wheel; and what it imports that the machine lacks
    .venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$CARRY/whl" basicsr==1.4.2
    .venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
        -d "$CARRY/whl" requests chardet idna urllib3 certifi  # requests needs chardet or charset-normalizer
    # x4plus and VGG19, losslessly packed (unpack checks every tensor's digest)
    cp "$tools" "$CARRY/pack_weights.py"
    .venv/bin/python "$tools" pack "$weights/realesrgan_x4plus_rrdb.pth" "$CARRY/weights/realesrgan_x4plus_rrdb.pk" params_ema  # its one key, kept
    .venv/bin/python "$tools" pack "$weights/vgg19_features_imagenet.pth" "$CARRY/weights/vgg19_features_imagenet.pk"
    if [ -n "${KERNELGAN_REPO:-}" ]; then
        rm -rf bench/out/KernelGAN && mkdir -p bench/out/KernelGAN
        (cd "$KERNELGAN_REPO" && tar --exclude=.git -cf - .) | tar -xf - -C bench/out/KernelGAN
    else
        echo "KERNELGAN_REPO unset: the official KernelGAN rows will say 'not available here'" >&2
    fi
    du -sh "$CARRY" bench/out/KernelGAN 2>/dev/null || true
}

run() {
    local site=/tmp/gpu_site wdir=/tmp/gpu_weights
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$CARRY"/whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    mkdir -p "$wdir"
    for pk in "$CARRY"/weights/*.pk; do
        python3 "$CARRY/pack_weights.py" unpack "$pk" "$wdir/$(basename "$pk" .pk).pth"
    done
    export REALSR_WEIGHTS_DIR="$wdir" KERNELGAN_REPO="$PWD/bench/out/KernelGAN" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 bench/gpu.py "$@"
}

case "${1:-}" in
    pack) pack ;;
    run) shift; run "$@" ;;
    *) echo "usage: bench/gpu.sh pack | run [bench/gpu.py args]" >&2; exit 2 ;;
esac
