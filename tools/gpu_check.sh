#!/bin/sh
# Everything to run on a GPU the first time, in one command (about 8 minutes on one H200): builds
# the op, runs its self-test and tests on CUDA, half precision and full-size checks, memcheck, the
# benchmark and a torchrun/NCCL smoke run; one line per check, a summary, figures in a JSON file
# ($OUT/gpu_check.json if OUT is set). Without a GPU it is a dry run that skips every check.
# Arguments go to tools/gpu_check.py (--only NAME..., --json PATH, --budget SECONDS).
cd "$(dirname "$0")/.." || exit 1
exec "${PYTHON:-python3}" -u tools/gpu_check.py "$@"
