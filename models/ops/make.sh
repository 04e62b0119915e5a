#!/bin/sh
# Builds and installs the compiled op MultiScaleDeformableAttention into the current Python
# environment, so that `import MultiScaleDeformableAttention` works from anywhere. Works from any
# directory. CPU kernels always; CUDA kernels too whenever nvcc and a CUDA build of torch are found
# (no GPU needed). Re-running it when nothing changed is a no-op.
#   PYTHON=python3           the interpreter whose environment receives the extension
#   MAX_JOBS=<cores>         parallel compile jobs
#   TORCH_CUDA_ARCH_LIST=... CUDA architectures (default: the visible GPUs', else with CI=true "8.0",
#                            else "7.0;7.5;8.0;8.6;8.9;9.0+PTX" less what the nvcc cannot target)
#   FORCE_CPU=1              build the CPU kernels only
#   MSDA_FORCE_BUILD=1       rebuild even when nothing changed
set -e
OPS_DIR=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}
export MAX_JOBS
cd "$OPS_DIR"

STAMP="$OPS_DIR/build/installed.key"
KEY=$("$PYTHON" build_config.py)
report() {
    (cd / && "$PYTHON" -c "import torch, MultiScaleDeformableAttention as m
print('MultiScaleDeformableAttention:', 'CPU + CUDA kernels' if m.compiled_with_cuda() else 'CPU kernels', 'in', m.__file__)")
}
if [ "${MSDA_FORCE_BUILD:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ] && report 2>/dev/null; then
    echo "MultiScaleDeformableAttention: up to date (MSDA_FORCE_BUILD=1 rebuilds)"
    exit 0
fi

echo "MultiScaleDeformableAttention: building $("$PYTHON" build_config.py describe)"
echo "MultiScaleDeformableAttention: compiling with MAX_JOBS=$MAX_JOBS (a CUDA build takes a few minutes)"
START=$(date +%s)
"$PYTHON" -m pip install --no-build-isolation --no-deps --disable-pip-version-check ${PIP_FLAGS:--q} .
mkdir -p "$OPS_DIR/build"
echo "$KEY" > "$STAMP"
report
echo "MultiScaleDeformableAttention: built and installed in $(( $(date +%s) - START )) s"
