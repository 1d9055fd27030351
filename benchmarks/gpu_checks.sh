#!/usr/bin/env bash
# Both GPU benchmarks as one prepared command for a lent GPU machine.
#
#   bash benchmarks/gpu_checks.sh OUTDIR            # on the GPU machine
#   bash benchmarks/gpu_checks.sh OUTDIR --smoke    # tiny sizes, any CPU
#   bash benchmarks/gpu_checks.sh OUTDIR --autoattack   # the AutoAttack
#       section alone (the three sections together can exceed one 600 s
#       device call: run the first two, then this one)
#
# With the device tool: run(command="bash benchmarks/gpu_checks.sh $OUT",
# timeout_s=540). The GPU image's python3 already has jax (CUDA), flax,
# optax, orbax-checkpoint, chex and tqdm; these two scripts need nothing else
# (checked on CPU with tensorflow_datasets, ml_collections and tensorboardX
# made unimportable). Writes to OUTDIR: train_step_gpu.md/.log (WRN-28-10,
# batch 512, bf16: images/s and MFU) and adversarial_gpu.md/.log
# (the ADV-COMP-SUM step with a 10-step attack) and autoattack_gpu.md/.log
# (the 'aa_standard' cascade on 10,000 CIFAR-sized images, WRN-28-10 random
# weights: images/s per stage). Copy the .md sections into
# benchmarks/results/train_step.md, adversarial.md and autoattack.md
# afterwards.
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUTDIR [--smoke]}
mode=${2:-}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  2>&1 | tee "$out/gpu.txt"
"$py" -c "import jax; print(jax.__version__, jax.devices())" \
  2>&1 | tee -a "$out/gpu.txt"
if [ "$mode" = "--smoke" ]; then
  train_args=(--allow_cpu --depth 10 --width 1 --batch 8 --steps 1)
  adv_args=(--depth 10 --width 1 --batch-size 8 --steps 1 --repeats 1
            --attack-steps 1)
  aa_args=(--smoke)
elif [ "$mode" = "--autoattack" ]; then
  timeout 540 "$py" benchmarks/gpu_autoattack.py \
    --out "$out/autoattack_gpu.md" 2>&1 | tee "$out/autoattack_gpu.log"
  exit "${PIPESTATUS[0]}"
else
  train_args=()
  adv_args=()
  aa_args=()
fi
status=0
timeout 270 "$py" benchmarks/gpu_train_step.py "${train_args[@]}" \
  --output "$out/train_step_gpu.md" 2>&1 | tee "$out/train_step_gpu.log" \
  || status=1
timeout 240 "$py" benchmarks/gpu_adversarial_step.py "${adv_args[@]}" \
  --out "$out/adversarial_gpu.md" 2>&1 | tee "$out/adversarial_gpu.log" \
  || status=1
timeout 540 "$py" benchmarks/gpu_autoattack.py "${aa_args[@]}" \
  --out "$out/autoattack_gpu.md" 2>&1 | tee "$out/autoattack_gpu.log" \
  || status=1
exit $status
