#!/usr/bin/env bash
# Runs the quickstart workflow and the tiny-fixture Flux pipeline on the CPU and on CUDA with the
# same binary, and compares the PNGs (tools/compare_pngs.py). For the lent GPU machine.
#
#   tools/check_cuda_outputs.sh WEFT [OUT_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
weft=$1
out=${2:-/tmp/weft-cuda-check}
rm -rf "$out"; mkdir -p "$out"
for device in cpu cuda:0; do
    tag=${device//:/}
    "$weft" run "$root/workflows/quickstart.ron" --device "$device" --output-dir "$out/quickstart-$tag" 2>&1 | tail -n 3
    "$root/tools/run_tiny_pipeline.sh" "$weft" "$device" "$out/tiny-$tag" 2>&1 | tail -n 2
done
echo "quickstart, CPU vs CUDA:"
python3 "$root/tools/compare_pngs.py" "$out/quickstart-cpu" "$out/quickstart-cuda0"
echo "tiny Flux pipeline, CPU vs CUDA:"
python3 "$root/tools/compare_pngs.py" "$out/tiny-cpu" "$out/tiny-cuda0"
