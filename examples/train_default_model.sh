#!/usr/bin/env bash
# The embedded default model, end to end: data, tokenizer, class-conditional MAGE, evaluation, packaging.
#
#   bash examples/train_default_model.sh [WORK_DIR]        (about 2.5 h on 2 idle CPU cores)
#
# Writes WORK_DIR/{fashion_mnist.npz, default_vq, default_mage, default_eval.json} and copies the final
# pipeline into src/mage_hf/default_model (asks before replacing it). One thread per process: on a 2-core
# machine shared with other jobs, two threads oversubscribe the cores and run several times slower.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK"

[ -f "$WORK/fashion_mnist.npz" ] || python examples/prepare_fashion_mnist.py --out "$WORK/fashion_mnist.npz"

python examples/train_tokenizer.py --train_data "$WORK/fashion_mnist.npz" --image_size 32 \
  --vq_config '{"base_channels": 32, "channel_multipliers": [1, 2, 2], "num_res_blocks": 1, "latent_channels": 32, "codebook_size": 512}' \
  --output_dir "$WORK/default_vq" --max_steps 1600 --per_device_train_batch_size 64 --logging_steps 50 \
  --save_steps 200 --learning_rate 1e-3 --warmup_steps 100 --gan_weight 0 --seed 0

python examples/pretrain.py --vqvae "$WORK/default_vq" --train_data "$WORK/fashion_mnist.npz" --image_size 32 \
  --model_config examples/default_model_config.json --class_conditional --class_dropout_prob 0.5 \
  --crop_min_scale 0.7 --pretokenize --pretokenize_views 4 \
  --output_dir "$WORK/default_mage" --per_device_train_batch_size 128 --max_steps 9000 \
  --base_learning_rate 2e-3 --warmup_steps 0.05 --lr_scheduler_type cosine \
  --logging_steps 50 --save_steps 250 --save_total_limit 3 --seed 0 --report_to none

# The guidance the plain class-conditional call uses, chosen from measured curves and saved in model_index.json.
python examples/sampling_curves.py --model "$WORK/default_mage" --data "$WORK/fashion_mnist.npz" \
  --out "$WORK/sampling_curves.json" --write-default

python examples/evaluate_default.py --model "$WORK/default_mage" --data "$WORK/fashion_mnist.npz" \
  --out "$WORK/default_eval.json"

# Package: asks before replacing the shipped model (the heredoc below is Python's stdin, so ask here).
TARGET=$(python -c "import mage_hf; print(mage_hf.DEFAULT_MODEL_PATH)")
if [ -e "$TARGET" ]; then
  read -r -p "replace $TARGET? [y/N] " answer < /dev/tty
  [ "$answer" = y ] || [ "$answer" = Y ] || { echo "kept the existing default model"; exit 0; }
fi
python - "$WORK/default_mage" "$TARGET" <<'PY'
# The package ships the weights and configs only: no remote-code copies of mage_hf's modules, no `auto_map`
# (the installed mage_hf registers the Auto classes itself).
import json, shutil, sys
from pathlib import Path
source, target = Path(sys.argv[1]), Path(sys.argv[2])
shutil.rmtree(target, ignore_errors=True)
keep = ("model_index.json", "scheduler", "transformer", "vqvae")
shutil.copytree(source, target, ignore=lambda d, names: [
    n for n in names if (Path(d) == source and n not in keep) or n.endswith(".py") or n == "__pycache__"])
for config_file in target.rglob("*.json"):
    config = json.loads(config_file.read_text())
    if config.pop("auto_map", None) is not None:
        config_file.write_text(json.dumps(config, indent=2) + "\n")
print(f"copied {source} to {target}")
PY
