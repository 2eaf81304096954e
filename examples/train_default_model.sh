#!/usr/bin/env bash
# The embedded default model, end to end: data, tokenizer, class-conditional MAGE, guidance choice, evaluation,
# packaging.
#
#   bash examples/train_default_model.sh [WORK_DIR] [--yes]        (150 min on 2 idle CPU cores, measured)
#
# Writes WORK_DIR/{fashion_mnist.npz, default_vq, default_mage, sampling_curves.json, default_eval.json} and
# copies the final pipeline into src/mage_hf/default_model (asks before replacing it; --yes replaces it without
# asking, for unattended runs). Training runs as NPROC data-parallel processes of one thread each (bf16 autocast,
# float32 master weights): on this project's 2-core CPU, 2 processes x 1 thread make 16% more steps/s than
# 1 process x 2 threads. The single-process stages (guidance curves, evaluation) use NPROC threads.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs}
REPLACE=${2:-}
if [ -n "$REPLACE" ] && [ "$REPLACE" != --yes ]; then echo "unknown argument $REPLACE (expected --yes)" >&2; exit 2; fi
NPROC=${NPROC:-2}
export OMP_NUM_THREADS=1
mkdir -p "$WORK"

if [ "$NPROC" -gt 1 ]; then
  # gloo DDP on CPU; on GPUs drop ACCELERATE_USE_CPU (and raise NPROC to the GPU count).
  launch() { ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-1} accelerate launch --multi_gpu --num_processes "$NPROC" "$@"; }
else
  launch() { python "$@"; }
fi
stage() { echo "[train_default_model] $(date +%H:%M:%S) +$((SECONDS / 60)) min: $*"; }

stage data
[ -f "$WORK/fashion_mnist.npz" ] || python examples/prepare_fashion_mnist.py --out "$WORK/fashion_mnist.npz"

# 1. Tokenizer: 5,000 steps at an effective batch of 64 (32 per process).
stage tokenizer
launch examples/train_tokenizer.py --train_data "$WORK/fashion_mnist.npz" --image_size 32 \
  --vq_config '{"base_channels": 32, "channel_multipliers": [1, 2, 2], "num_res_blocks": 1, "latent_channels": 32, "codebook_size": 512}' \
  --output_dir "$WORK/default_vq" --max_steps 5000 --per_device_train_batch_size $((64 / NPROC)) --logging_steps 100 \
  --save_steps 500 --save_total_limit 2 --learning_rate 1e-3 --warmup_steps 100 --gan_weight 0 --seed 0 \
  --mixed_precision bf16

# 2. Class-conditional MAGE: 9,500 steps at an effective batch of 128, on 4 pre-tokenized augmented views.
stage mage
launch examples/pretrain.py --vqvae "$WORK/default_vq" --train_data "$WORK/fashion_mnist.npz" --image_size 32 \
  --model_config examples/default_model_config.json --class_conditional --class_dropout_prob 0.5 \
  --crop_min_scale 0.7 --pretokenize --pretokenize_views 4 \
  --output_dir "$WORK/default_mage" --per_device_train_batch_size $((128 / NPROC)) --max_steps 9500 \
  --base_learning_rate 2e-3 --warmup_steps 0.05 --lr_scheduler_type cosine --bf16 \
  --logging_steps 100 --save_steps 500 --save_total_limit 2 --seed 0 --report_to none --disable_tqdm true

# 3. The guidance the plain class-conditional call uses, chosen from measured curves and saved in model_index.json.
stage guidance curves
python examples/sampling_curves.py --model "$WORK/default_mage" --data "$WORK/fashion_mnist.npz" \
  --guidance-scales 1 2 4 6 9 --schedules constant --steps-sweep 6 12 20 --threads "$NPROC" \
  --out "$WORK/sampling_curves.json" --write-default

# 4. The README's results table.
stage evaluation
python examples/evaluate_default.py --model "$WORK/default_mage" --data "$WORK/fashion_mnist.npz" \
  --guidance-scales 1 3 9 --threads "$NPROC" --out "$WORK/default_eval.json"
stage done training and evaluation

# 5. Package: asks before replacing the shipped model (--yes: without asking).
python examples/package_default_model.py "$WORK/default_mage" $REPLACE
stage packaged
