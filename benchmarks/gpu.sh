#!/usr/bin/env bash
# Every GPU benchmark and the CUDA tests, in one run that fits a device lease (under 7 minutes on
# one H100/H200; each step has its own time limit and the script stops starting steps when its
# total budget is spent), for the `device` tool of this workplace or any CUDA box:
#   bash benchmarks/gpu.sh [OUT_DIR]        (default OUT_DIR: $OUT, else benchmarks/gpu_out)
#   bash benchmarks/gpu.sh --check          (on a CPU: proves every step would run there)
# Each step writes its markdown table to OUT_DIR/<name>.md and the whole log to OUT_DIR/gpu.log;
# copy the tables into benchmarks/RESULTS.md with the device, the date and this command.
#
# Self-sufficient: it installs nothing and needs only the repository and python3 with torch
# (the device image's python3, or $PYTHON). Every step imports only what the GPU machines' image
# has (benchmarks/device_env/packages.txt: torch, numpy, h5py, PIL, yaml, jinja2, tqdm, pytest,
# ...; no jsonschema, snakemake or pycocoevalcap); the CUDA tests are the files that mark tests
# `gpu`, and they import nothing else. --check runs every step on the CPU at tiny sizes with
# the packages the image lacks made unimportable (benchmarks/device_env/sitecustomize.py), and
# fails if a step fails or a test file does not collect: `make test` runs it
# (tests/test_gpu_script.py).
set -u
cd "$(dirname "$0")/.."
check=0
if [ "${1:-}" = "--check" ]; then check=1; shift; fi
out="${1:-${OUT:-benchmarks/gpu_out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
log="$out/gpu.log"
: > "$log"
budget=400   # seconds for all steps together (the lease's 7 minutes less start and transfers)
started=$SECONDS
failed=0
if [ "$check" = 1 ]; then
    budget=600  # a loaded 2-core CI machine; about 2 minutes when idle
    export MIA_DEVICE_PACKAGES="$PWD/benchmarks/device_env/packages.txt"
    export PYTHONPATH="$PWD/benchmarks/device_env:$PYTHONPATH"
    export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
fi
"$py" - <<'PY' 2>&1 | tee -a "$log"
import os, sys
import torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE",
      "(device-image imports)" if os.environ.get("MIA_DEVICE_PACKAGES") else "")
PY
step() {  # step NAME LIMIT_S COMMAND...
    local name="$1" limit="$2"; shift 2
    local left=$((budget - (SECONDS - started)))
    if [ "$left" -lt 15 ]; then
        echo "=== $name SKIPPED: the script's ${budget} s budget is spent" | tee -a "$log"
        failed=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
    local t0=$SECONDS rc=0
    timeout -k 10 "$limit" "$@" > "$out/$name.md" 2>> "$log" || rc=$?
    if [ "$rc" = 0 ] && [ -s "$out/$name.md" ]; then
        echo "=== $name done in $((SECONDS - t0)) s" | tee -a "$log"
    else
        echo "=== $name FAILED (rc $rc$([ "$rc" = 124 ] && echo ', timed out')) after" \
             "$((SECONDS - t0)) s" | tee -a "$log"
        failed=1
    fi
    cat "$out/$name.md" >> "$log"
}
gpu_tests=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
if [ "$check" = 1 ]; then
    d="--device cpu"
    step mia_module     90 "$py" benchmarks/mia_module.py $d --batch 2 --repeats 1 --warmup 0
    step captioners     90 "$py" benchmarks/captioners.py $d --check
    step scst           90 "$py" benchmarks/scst.py $d --check
    step vqa            90 "$py" benchmarks/vqa.py $d --check
    step features       90 "$py" benchmarks/features.py --cpu-batches 1 --cpu-batch-size 1 --workers 0
    step finetune_input 90 "$py" benchmarks/finetune_input.py $d --check
    step training_step  90 "$py" benchmarks/training_step.py $d --check
    step bottom_up     120 "$py" benchmarks/bottom_up.py --cpu-tiny-images 1 --cpu-full-images 0 --workers 0
    step cuda_tests     90 "$py" -m pytest -q -rs -m gpu -p no:cacheprovider $gpu_tests
else
    d="--device cuda"
    step mia_module     25 "$py" benchmarks/mia_module.py $d
    step captioners     35 "$py" benchmarks/captioners.py $d
    step scst           45 "$py" benchmarks/scst.py $d
    step vqa            35 "$py" benchmarks/vqa.py $d
    step features       25 "$py" benchmarks/features.py --cpu-batches 0
    step finetune_input 25 "$py" benchmarks/finetune_input.py $d
    # compiled decoding (CUDA graphs) compiles first: up to a minute of these two steps
    step training_step  70 "$py" benchmarks/training_step.py $d --throughput "$out/throughput.json"
    step bottom_up      80 "$py" benchmarks/bottom_up.py --cpu-tiny-images 2 --cpu-full-images 0
    step cuda_tests     60 "$py" -m pytest -q -rs -m gpu -p no:cacheprovider $gpu_tests
fi
echo "all steps in $((SECONDS - started)) s; tables in $out" | tee -a "$log"
exit $failed
