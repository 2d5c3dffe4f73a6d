#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_bench.py needs on the GPU machine into .whl/ (git-ignored).
#
# The GPU machine (Python 3.12, torch 2.11 + torchvision 0.26, transformers 5.17, timm, pyarrow, pandas, scipy,
# matplotlib, typer, rich, pyyaml, safetensors, tokenizers) has no open_clip_torch or pydantic and cannot fetch
# anything: these travel with the working tree (64 MiB in all, wheels included). Versions come from
# requirements/lock-cpu.txt, the stack the test suite runs on. Dependencies checked by hand (Requires-Dist):
# open_clip_torch -> ftfy (-> wcwidth), and regex, tqdm, huggingface_hub, safetensors, timm, torch, torchvision
# (all on the GPU machine); pydantic -> pydantic-core, annotated-types, typing-inspection, typing-extensions
# (typing-extensions comes with torch, but maybe older than pydantic's >= 4.16: it travels too).
#
# Run in the checkout that the device tool sends, then, as ONE device command carrying `.whl`:
#   python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*.whl . && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_bench.py --out $OUT
# (about 8 minutes on an H200; give it timeout_s 600). Rehearse it on CPU first with --rehearse.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(open_clip_torch ftfy wcwidth pydantic pydantic_core annotated-types typing-inspection typing_extensions)
rm -rf .whl
mkdir -p .whl
for name in "${PACKAGES[@]}"; do
    pin=$(grep -i -E "^${name//[-_]/[-_]}==" requirements/lock-cpu.txt | head -1)
    if [[ -z "$pin" ]]; then
        echo "gpu_wheels: $name is not pinned in requirements/lock-cpu.txt" >&2
        exit 1
    fi
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$pin"
done
ls -l .whl
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '$2 == "total" {sum += $1} END {print sum}')
total=$((wheels + tracked))
echo "wheels $((wheels / 1024)) KiB + tracked files $((tracked / 1024)) KiB = $((total / 1024)) KiB (limit 65536 KiB)"
if ((total > 64 * 1024 * 1024)); then
    echo "gpu_wheels: over the 64 MiB the device tool carries" >&2
    exit 1
fi
