#!/usr/bin/env bash
# The accelerator benchmarks in one run, every figure into one results file.
#
#   bash benchmarks/gpu.sh [RESULTS_FILE]        # default: benchmarks/gpu_results.md
#   SMOKE=1 bash benchmarks/gpu.sh /tmp/r.md     # the same steps at toy size (any machine)
#   CHECK_FLAGS=1 bash benchmarks/gpu.sh /tmp/r.md   # only parse every step's flags
#
# On the GPU host: latency (ViT-B and ViT-H; float32 and bfloat16; K in
# {1, 50, 200}; batch 1 and 16) beside the three PyTorch flows of
# benchmarks/torch_flows.py, throughput of an evaluation pass (SAM + SimSAM
# K=50 over generated 256x256 images, batch 1 and 16), and the bfloat16 vs
# float32 agreement of SAM and SimSAM masks. Python packages the host lacks
# can be installed first from wheels in .whl/ (WHEELS=.whl, see
# benchmarks/RESULTS.md). Sized to finish in about 8 minutes on one H200.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-benchmarks/gpu_results.md}
py=${PYTHON:-python3}
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/simsam_site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/simsam_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ -n "${SMOKE:-}" ]; then
  b=tiny; h=tiny; ks=1,2; big_ks=2; batch=2; n=4; reps=1; size=61
else
  b=vit_b; h=vit_h; ks=1,50,200; big_ks=50; batch=16; n=128; reps=20; size=256
fi

run() {  # run TITLE CMD...: the command's output under a heading, failures recorded
  echo "## $1" | tee -a "$out"
  echo '```' >> "$out"
  echo "\$ ${*:2}" >> "$out"
  local cmd=("${@:2}")
  if [ -n "${CHECK_FLAGS:-}" ]; then cmd+=(--only_check_args); fi  # absl: parse, exit 0
  if ! "${cmd[@]}" 2>&1 | tee -a "$out"; then echo "FAILED: $1" | tee -a "$out"; fi
  echo '```' >> "$out"
  echo >> "$out"
}

: > "$out"
{
  echo "# simsam_jax accelerator benchmarks, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
  "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" || true
  echo '```'
  echo
} | tee -a "$out"

for precision in bfloat16 float32; do
  run "latency ViT-B $precision" "$py" benchmarks/latency.py --preset=$b --precision=$precision \
    --ks=$ks --batch=$batch --repeats=$reps --size=$size
done
run "throughput ViT-B bfloat16, batch $batch" "$py" benchmarks/throughput.py --preset=$b \
  --precision=bfloat16 --batch=$batch --num_images=$n --ks=$big_ks --size=$size \
  --torch_images=$((n / 4))
run "throughput ViT-B bfloat16, batch 1" "$py" benchmarks/throughput.py --preset=$b \
  --precision=bfloat16 --batch=1 --num_images=$((n / 4)) --ks=$big_ks --size=$size --torch_flows=
run "throughput ViT-B float32, batch $batch" "$py" benchmarks/throughput.py --preset=$b \
  --precision=float32 --batch=$batch --num_images=$((n / 2)) --ks=$big_ks --size=$size \
  --torch_flows=
for precision in bfloat16 float32; do
  run "latency ViT-H $precision" "$py" benchmarks/latency.py --preset=$h --precision=$precision \
    --ks=$big_ks --repeats=$((reps / 2 + 1)) --size=$size --torch_flows=authors,strong
done
run "agreement bfloat16 vs float32" "$py" benchmarks/agreement.py --preset=$b \
  --num_images=$((n / 4)) --size=$size
echo "wrote $out"
