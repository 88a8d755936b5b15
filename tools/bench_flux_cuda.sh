#!/usr/bin/env bash
# The Flux-dev-shaped model benchmark of docs/BENCHMARKS.md on the lent GPU machine, peers in the
# same call: the peer script writes the Q8_0 file (city96 layout, random weights) and runs
# diffusers-GGUF and torch bf16 on it; weft runs the same file, then a Q4_K file of its own generator.
#
#   tools/bench_flux_cuda.sh WEFT PEER_SCRIPT WORK_DIR [STEPS]
# PYTHONPATH must reach diffusers and gguf (the device has torch).
set -euo pipefail
weft=$1; peer=$2; work=$3; steps=${4:-4}
mkdir -p "$work"
python3 "$peer" "$work" --only gen
q8="$work/flux-dev-random-Q8_0.gguf"
"$weft" bench model "$q8" --device cuda:0 --res 1024 --steps "$steps"
"$weft" bench synth-flux "$work/q4k.gguf" --type q4_k --shape dev
"$weft" bench model "$work/q4k.gguf" --device cuda:0 --res 1024 --steps "$steps"
rm -f "$work/q4k.gguf"
python3 "$peer" "$work" --steps 5
