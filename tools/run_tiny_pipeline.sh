#!/usr/bin/env bash
# Runs the shipped workflows/flux-txt2img.ron on the tiny fixture models, as the from-prompt case of
# tests/pipeline/txt2img.rs does (case "prompt" of tests/fixtures/pipeline/cases.json): the fixtures
# are copied under ComfyUI-style names into a temporary models folder and the case's parameters are
# set with --set. Prints weft's per-node durations and the wall time of the whole process.
#
#   tools/run_tiny_pipeline.sh [WEFT] [DEVICE] [OUTPUT_DIR] [extra weft run args...]
#   tools/run_tiny_pipeline.sh target-release/release/weft cuda:0 /tmp/tiny-cuda
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
weft=${1:-$root/target-release/release/weft}
device=${2:-cpu}
out=${3:-$root/output/tiny-${device//:/}}
shift $(( $# < 3 ? $# : 3 ))

fixtures=$root/tests/fixtures
models=$(mktemp -d)
trap 'rm -rf "$models"' EXIT
place() { mkdir -p "$(dirname "$models/$2")"; cp "$fixtures/$1" "$models/$2"; }
place pipeline/flux_prompt.gguf diffusion_models/flux1-dev-Q8_0.gguf
place vae/flux_vae.safetensors vae/ae.safetensors
place pipeline/t5xxl.gguf text_encoders/t5-v1_1-xxl-encoder-Q8_0.gguf
place pipeline/clip_l.gguf text_encoders/clip_l.gguf

mkdir -p "$out"
start=$(date +%s.%N)
"$weft" run "$root/workflows/flux-txt2img.ron" --device "$device" --models-dir "$models" --output-dir "$out" \
    --set clip.clip_name2=clip_l.gguf \
    --set sampler.seed=7 --set sampler.steps=4 --set sampler.cfg=2.0 \
    --set sampler.sampler_name=dpmpp_2m --set sampler.scheduler=beta --set sampler.denoise=1.0 \
    --set guidance.guidance=3.5 \
    --set 'positive.text=a photo of a (red:1.3) fox in the snow, highly detailed' \
    --set 'negative.text=blurry, low quality' \
    --set width.value=96 --set height.value=64 \
    "$@"
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v d="$device" 'BEGIN { printf "wall (%s, whole process): %.2fs\n", d, e - s }'
