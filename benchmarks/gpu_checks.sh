#!/usr/bin/env bash
# Every GPU check of the project in one run, for a task lent a GPU (under 8 minutes on one H100/H200).
#
# Prepare here (the device has no network, an older torch and no pydantic/zstandard; ../shared does not
# travel), then run there through the device tool with
# carry [".whl", ".gpu-data/hellaswag_val.klosax-preprocessed.jsonl.gz"] (a path through a link travels):
#     bash benchmarks/gpu_checks.sh --prepare        # wheels into .whl/, .gpu-data -> ../shared/data/eval
#     bash benchmarks/gpu_checks.sh                  # on the device: results under $OUT
# Record the figures in docs/BENCHMARKS.md ("Training throughput on a GPU", "HellaSwag timing").
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.gpu-data' .git/info/exclude || echo '/.gpu-data' >> .git/info/exclude  # a link: no trailing slash
    pins=$(.venv/bin/python -m pip freeze 2>/dev/null | grep -i -E '^(pydantic|pydantic_core|annotated-types|typing-inspection|zstandard)==')
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $pins
    [ -e .gpu-data ] || ln -s ../shared/data/eval .gpu-data  # a link, not a copy of the shared data
    ls -la .whl .gpu-data/hellaswag_val.klosax-preprocessed.jsonl.gz
    exit 0
fi
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/torch.txt"
# Training throughput, MFU, peak memory and checkpoint time at 124M, seq 1024, default path (compile on CUDA).
timeout 300 python3 benchmarks/train_gpu.py 2>&1 | tee "$OUT/train_gpu.txt"
# The full HellaSwag validation set scored by a 124M-shaped model.
timeout 150 python3 benchmarks/hellaswag_timing.py --shape gpt2-124m --device cuda \
    --file .gpu-data/hellaswag_val.klosax-preprocessed.jsonl.gz 2>&1 | tee "$OUT/hellaswag_timing.txt"
