#!/usr/bin/env bash
# Every GPU benchmark and the CUDA tests, in one run that fits a device lease (< 8 minutes on one
# H100/H200), for the `device` tool of this workplace or any CUDA box:
#   bash benchmarks/gpu.sh [OUT_DIR]        (default OUT_DIR: $OUT, else benchmarks/gpu_out)
# Each step writes its markdown table to OUT_DIR/<name>.md and the whole log to OUT_DIR/gpu.log;
# copy the tables into benchmarks/RESULTS.md with the device, the date and this command.
# Runs with whatever python3 has torch with CUDA (the device image's), the repo on PYTHONPATH;
# a step that fails is reported and the next one runs. The device image (KINDS.md) has torch,
# h5py, numpy, jinja2, pyyaml, tqdm; carry wheels of pycocoevalcap and jsonschema for the SCST
# benchmark's plain side and the config-reading tests.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-benchmarks/gpu_out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
log="$out/gpu.log"
: > "$log"
"$py" - <<'PY' 2>&1 | tee -a "$log"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO CUDA DEVICE")
PY
step() {  # step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"; shift 2
    echo "=== $name: $*" | tee -a "$log"
    local start=$SECONDS
    if timeout -k 10 "$limit" "$@" > "$out/$name.md" 2>> "$log"; then
        echo "=== $name done in $((SECONDS - start)) s" | tee -a "$log"
    else
        echo "=== $name FAILED or timed out (rc $?) after $((SECONDS - start)) s" | tee -a "$log"
    fi
    cat "$out/$name.md" >> "$log"
}
step mia_module   60 "$py" benchmarks/mia_module.py --device cuda
step captioners   90 "$py" benchmarks/captioners.py --device cuda
step scst        120 "$py" benchmarks/scst.py --device cuda
step vqa          90 "$py" benchmarks/vqa.py --device cuda
step features     60 "$py" benchmarks/features.py --cpu-batches 0
step bottom_up   150 "$py" benchmarks/bottom_up.py --cpu-tiny-images 2 --cpu-full-images 0
step cuda_tests   60 "$py" -m pytest -q -m gpu -p no:cacheprovider tests/
echo "tables in $out" | tee -a "$log"
