"""Training speed in float32 vs bfloat16 autocast (float32 master weights), and whether the loss curves agree.

Speed (default): one optimizer step of each workload, float32 and bf16 autocast timed in alternating rounds in
one process (so the ratio does not depend on how busy a shared machine was over time), printed as one markdown
table. Each step is what the training scripts run per batch:

- `pretrain` (`examples/pretrain.py --pretokenize`): masked-token forward on pre-tokenized ids (masks drawn
  inside the model), backward, gradient clipping 3.0, fused AdamW;
- `pretrain-pixels` (`examples/pretrain.py` without `--pretokenize`): the same from pixels, the frozen VQ
  tokenizer running inside the forward (it opts out of autocast, so its token ids are exact);
- `tokenizer` (`examples/train_tokenizer.py`): `VQTrainingModule` forward, L1 + L2 + codebook + commitment
  losses, backward, clipping 1.0, AdamW.

Models: `default` (examples/default_model_config.json with the recipe's tokenizer, 32 px, batch 128, random
weights), `vitb` (the published ViT-B/256 shapes, random weights, small batch) and the recipe's tokenizer at
32 px, batch 64. bf16 autocast is `torch.autocast("cpu", torch.bfloat16)`, which is what `Trainer` (`--bf16`)
and Accelerate (`--mixed_precision bf16`) enter around the forward; weights, gradients and the optimizer stay
float32.

Curves (`--curves STEPS`): runs `examples/pretrain.py` itself (subprocesses, the recipe's flags, the shipped
default tokenizer, the tests' Fashion-MNIST subset, learning rate as in the recipe's first STEPS steps) three
times: float32 seed 0, bf16 seed 0, float32 seed 1; and compares the per-step losses of bf16 vs float32 with the
run-to-run noise (float32 seed 1 vs seed 0).

    python benchmarks/training_precision.py                    # ~3 min on 2 CPU cores
    python benchmarks/training_precision.py --quick            # tiny shapes, seconds
    python benchmarks/training_precision.py --curves 250 --plot docs/images/bf16_loss_curves.png
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger("training_precision")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_CONFIG = REPO_ROOT / "examples" / "default_model_config.json"
PRETRAIN_SCRIPT = REPO_ROOT / "examples" / "pretrain.py"
FASHION_MNIST_SUBSET = REPO_ROOT / "tests" / "data" / "fashion_mnist_5k.npz"
# The tokenizer of examples/train_default_model.sh.
RECIPE_VQ_CONFIG = {"base_channels": 32, "channel_multipliers": [1, 2, 2], "num_res_blocks": 1,
                    "latent_channels": 32, "codebook_size": 512, "sample_size": 32}
TINY_VQ_CONFIG = {"base_channels": 32, "channel_multipliers": [1, 2], "num_res_blocks": 1, "latent_channels": 32,
                  "codebook_size": 16, "sample_size": 16}
TINY_MODEL_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                     "decoder_hidden_size": 32, "decoder_num_hidden_layers": 1, "decoder_num_attention_heads": 2,
                     "decoder_intermediate_size": 64, "num_class_tokens": 11, "fake_class_label": 26,
                     "max_position_embeddings": 65}
# The recipe's pre-training flags (examples/train_default_model.sh), less the schedule length and output.
RECIPE_PRETRAIN_FLAGS = ["--image_size", "32", "--class_conditional", "--class_dropout_prob", "0.5",
                         "--crop_min_scale", "0.7", "--pretokenize", "--pretokenize_views", "4",
                         "--per_device_train_batch_size", "128", "--base_learning_rate", "2e-3",
                         "--lr_scheduler_type", "cosine", "--report_to", "none"]
RECIPE_MAX_STEPS = 9000
RECIPE_WARMUP_RATIO = 0.05
PRECISIONS = ("fp32", "bf16")


# ----------------------------------------------------------------------------- workloads
def autocast(precision: str):
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def mage_config(name: str):
    """`MageConfig` of a random-weight model: `default` (the recipe's), `vitb` (ViT-B/256) or `tiny`."""
    from mage_hf import MageConfig

    if name == "vitb":
        return MageConfig.from_preset("mage_vit_base_patch16")
    if name == "default":
        kwargs = json.loads(DEFAULT_MODEL_CONFIG.read_text())
        return MageConfig(**kwargs, image_size=32, vqvae_config=dict(RECIPE_VQ_CONFIG))
    if name == "tiny":
        return MageConfig(**TINY_MODEL_CONFIG, image_size=16, vqvae_config=dict(TINY_VQ_CONFIG))
    raise ValueError(f"`name` must be 'default', 'vitb' or 'tiny', got {name!r}")


def pretrain_step_fn(config, batch: int, pixels: bool):
    """A closure `step(precision)`: one pre-training optimizer step as `MagePretrainingTrainer` takes it."""
    from mage_hf import MageForMaskedImageModeling

    torch.manual_seed(0)
    model = MageForMaskedImageModeling(config).train()
    model.mage.fc_norm.requires_grad_(False)  # as pretrain.py: the token loss never reads it
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=True)
    images = torch.rand(batch, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    token_ids = model.mage.tokenize(images)
    labels = torch.arange(batch) % max(config.num_class_tokens - 1, 1)
    generator = torch.Generator().manual_seed(0)
    inputs = {"pixel_values": images} if pixels else {"image_token_ids": token_ids}

    def step(precision: str) -> float:
        with autocast(precision):
            loss = model(**inputs, class_labels=labels, generator=generator).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def tokenizer_step_fn(vq_config: dict, batch: int):
    """A closure `step(precision)`: one `train_tokenizer.py` generator step (no GAN, as the recipe)."""
    from mage_hf import MageVQModel
    from mage_hf.training.vq_training import VQLossWeights, VQTrainingModule, vq_losses

    torch.manual_seed(0)
    module = VQTrainingModule(MageVQModel(**vq_config)).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, betas=(0.5, 0.9))
    size = vq_config["sample_size"]
    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    weights = VQLossWeights(gan=0.0)

    def step(precision: str) -> float:
        with autocast(precision):
            out = module(pixels)
            loss = vq_losses(out, pixels, weights, None)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def workloads(quick: bool, vitb_batch: int) -> list[tuple[str, int, object]]:
    """(name, batch, step closure) of every row; built lazily so one model is in memory at a time."""
    if quick:
        config = mage_config("tiny")
        return [("tiny pretrain (tokens)", 8, lambda: pretrain_step_fn(config, 8, pixels=False)),
                ("tiny pretrain (pixels)", 8, lambda: pretrain_step_fn(config, 8, pixels=True)),
                ("tiny tokenizer", 8, lambda: tokenizer_step_fn(TINY_VQ_CONFIG, 8))]
    default, vitb = mage_config("default"), mage_config("vitb")
    return [("default pretrain (pre-tokenized, the recipe)", 128, lambda: pretrain_step_fn(default, 128, False)),
            ("default pretrain (from pixels)", 128, lambda: pretrain_step_fn(default, 128, True)),
            ("ViT-B/256 pretrain (pre-tokenized)", vitb_batch, lambda: pretrain_step_fn(vitb, vitb_batch, False)),
            ("default tokenizer (32 px)", 64, lambda: tokenizer_step_fn(RECIPE_VQ_CONFIG, 64))]


def time_interleaved(step, rounds: int, steps_per_round: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each precision, per round; within a round fp32 and bf16 alternate in order."""
    for precision in PRECISIONS:
        for _ in range(warmup):
            step(precision)
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for index in range(rounds):
        order = PRECISIONS if index % 2 == 0 else PRECISIONS[::-1]
        for precision in order:
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step(precision)
            seconds[precision].append((time.perf_counter() - start) / steps_per_round)
    return seconds


def speed_rows(quick: bool, rounds: int, steps_per_round: int, vitb_batch: int) -> list[dict]:
    rows = []
    for name, batch, build in workloads(quick, vitb_batch):
        step = build()
        seconds = time_interleaved(step, rounds, steps_per_round, warmup=1)
        # Median over rounds (a shared machine slows single rounds); the ratio is per round, then median.
        fp32, bf16 = (statistics.median(seconds[p]) for p in PRECISIONS)
        ratios = [a / b for a, b in zip(seconds["fp32"], seconds["bf16"])]
        rows.append(dict(work=name, batch=batch, fp32_s=fp32, bf16_s=bf16, speedup=statistics.median(ratios),
                         speedup_min=min(ratios), speedup_max=max(ratios), rounds=rounds))
        logger.info(f"{name}: fp32 {fp32:.3f} s/step, bf16 {bf16:.3f} s/step")
        del step
    return rows


def speed_table(rows: list[dict]) -> str:
    lines = ["| work | batch | fp32 s/step | bf16 s/step | fp32 steps/s | bf16 steps/s | bf16 speed-up (range) |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['work']} | {row['batch']} | {row['fp32_s']:.3f} | {row['bf16_s']:.3f} | "
                     f"{1 / row['fp32_s']:.2f} | {1 / row['bf16_s']:.2f} | {row['speedup']:.2f}x "
                     f"({row['speedup_min']:.2f}-{row['speedup_max']:.2f}) |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- loss curves
def run_pretrain(output_dir: Path, steps: int, precision: str, seed: int, vqvae: str, data: str, cache_dir: Path,
                 extra: list[str]) -> dict:
    """Runs examples/pretrain.py for `steps` steps (logging every step) with the recipe's warm-up, so the
    learning rate is the recipe's over its first `steps` steps; returns the per-step losses and steps/s."""
    warmup = max(1, round(RECIPE_WARMUP_RATIO * RECIPE_MAX_STEPS))
    command = [sys.executable, str(PRETRAIN_SCRIPT), "--vqvae", vqvae, "--train_data", data,
               "--model_config", str(DEFAULT_MODEL_CONFIG), *RECIPE_PRETRAIN_FLAGS, "--output_dir", str(output_dir),
               "--pretokenize_cache_dir", str(cache_dir), "--max_steps", str(steps), "--warmup_steps", str(warmup),
               "--logging_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", str(seed),
               "--use_cpu", "true", *extra]
    if precision == "bf16":
        command.append("--bf16")
    logger.info(" ".join(command))
    subprocess.run(command, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    summary = next(entry for entry in state["log_history"] if "train_steps_per_second" in entry)
    return {"losses": losses, "steps_per_second": summary["train_steps_per_second"]}


def window_means(values: list[float], window: int) -> list[float]:
    return [statistics.fmean(values[i:i + window]) for i in range(0, len(values) - window + 1, window)]


def curve_stats(reference: list[float], other: list[float], skip: int, window: int) -> dict:
    """Per-step and per-window |difference| of two loss curves (after the first `skip` steps)."""
    steps = min(len(reference), len(other))
    diffs = [other[i] - reference[i] for i in range(skip, steps)]
    window_diffs = [b - a for a, b in zip(window_means(reference[skip:steps], window),
                                          window_means(other[skip:steps], window))]
    return {"mean_abs_step": statistics.fmean(abs(d) for d in diffs),
            "rms_step": math.sqrt(statistics.fmean(d * d for d in diffs)),
            "mean_step": statistics.fmean(diffs),
            "max_abs_window": max(abs(d) for d in window_diffs),
            "mean_abs_window": statistics.fmean(abs(d) for d in window_diffs)}


def loss_curves(steps: int, work_dir: Path, vqvae: str, data: str, extra: list[str], window: int) -> dict:
    cache = work_dir / "pretokenized"
    runs = {}
    for name, precision, seed in (("fp32 seed 0", "fp32", 0), ("bf16 seed 0", "bf16", 0), ("fp32 seed 1", "fp32", 1)):
        runs[name] = run_pretrain(work_dir / name.replace(" ", "_"), steps, precision, seed, vqvae, data, cache, extra)
        logger.info(f"{name}: final loss {runs[name]['losses'][-1]:.4f}, {runs[name]['steps_per_second']} steps/s")
    skip = min(10, steps // 10)
    reference = runs["fp32 seed 0"]["losses"]
    within = [statistics.pstdev(reference[i:i + window]) for i in range(skip, len(reference) - window + 1, window)]
    return {"steps": steps, "window": window, "skip": skip, "runs": runs,
            "bf16_vs_fp32": curve_stats(reference, runs["bf16 seed 0"]["losses"], skip, window),
            "seed_vs_seed": curve_stats(reference, runs["fp32 seed 1"]["losses"], skip, window),
            "within_run_std": statistics.fmean(within) if within else float("nan")}


def curves_table(result: dict) -> str:
    bf16, noise = result["bf16_vs_fp32"], result["seed_vs_seed"]
    runs = result["runs"]
    lines = [f"Steps {result['skip'] + 1}-{result['steps']} (per-step losses; windows of {result['window']} steps); "
             f"within-run std of the float32 loss over a window: {result['within_run_std']:.4f}.", "",
             "| comparison | mean abs diff / step | RMS diff / step | mean diff (bias) | mean abs diff / window "
             "| max abs diff / window |",
             "|---|---|---|---|---|---|"]
    for name, stats in (("bf16 vs fp32 (same seed)", bf16), ("fp32 seed 1 vs seed 0 (noise)", noise)):
        lines.append(f"| {name} | {stats['mean_abs_step']:.4f} | {stats['rms_step']:.4f} | {stats['mean_step']:+.4f} "
                     f"| {stats['mean_abs_window']:.4f} | {stats['max_abs_window']:.4f} |")
    lines += ["", "| run | loss at step 1 | mean loss, last window | steps/s (whole run) |", "|---|---|---|---|"]
    for name, run in runs.items():
        last = statistics.fmean(run["losses"][-result["window"]:])
        lines.append(f"| {name} | {run['losses'][0]:.4f} | {last:.4f} | {run['steps_per_second']:.3g} |")
    return "\n".join(lines)


def save_plot(result: dict, path: Path, width: int = 720, height: int = 400) -> None:
    """The three loss curves (window means) as a PNG, drawn with PIL only."""
    from PIL import Image, ImageDraw

    # Drawn in this order: the noise run, then float32 wide and bf16 thin on top (they overlap when they agree).
    colors = {"fp32 seed 1": (170, 170, 170), "fp32 seed 0": (31, 119, 180), "bf16 seed 0": (214, 39, 40)}
    widths = {"fp32 seed 1": 2, "fp32 seed 0": 6, "bf16 seed 0": 2}
    window = max(1, result["window"] // 2)
    series = {name: window_means(run["losses"], window) for name, run in result["runs"].items()}
    low = min(min(v) for v in series.values())
    high = max(max(v) for v in series.values())
    left, right, top, bottom = 60, 20, 30, 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))

    def xy(index: int, value: float, count: int) -> tuple[float, float]:
        x = left + (width - left - right) * (index + 0.5) / count
        y = top + (height - top - bottom) * (high - value) / max(high - low, 1e-9)
        return x, y

    for name in colors:
        values = series[name]
        draw.line([xy(i, v, len(values)) for i, v in enumerate(values)], fill=colors[name], width=widths[name])
    for k in range(5):
        value = low + (high - low) * k / 4
        _, y = xy(0, value, 1)
        draw.text((5, y - 6), f"{value:.2f}", fill=(0, 0, 0))
    draw.text((left, height - bottom + 8), f"pre-training step 0 .. {result['steps']}  (loss, mean of {window} steps; "
              "fp32 wide, bf16 thin on top)",
              fill=(0, 0, 0))
    for k, (name, color) in enumerate(colors.items()):
        draw.text((left + 10 + 150 * k, 10), name, fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (seconds): checks the script runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved fp32/bf16 rounds (default 5; quick 2)")
    parser.add_argument("--steps_per_round", type=int, default=None, help="steps per precision per round (default 2)")
    parser.add_argument("--vitb_batch", type=int, default=2, help="ViT-B/256 batch size")
    parser.add_argument("--curves", type=int, default=0, metavar="STEPS",
                        help="instead of speed: compare fp32 / bf16 pre-training loss curves over STEPS steps")
    parser.add_argument("--curve_window", type=int, default=25, help="steps per window in the curve comparison")
    parser.add_argument("--vqvae", default=None, help="tokenizer for --curves (default: the shipped default model's)")
    parser.add_argument("--train_data", default=str(FASHION_MNIST_SUBSET), help="data for --curves")
    parser.add_argument("--work_dir", default=None, help="where --curves runs write (default: a temporary folder)")
    parser.add_argument("--plot", default=None, help="save the --curves plot (PNG) here")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--pretrain_args", nargs=argparse.REMAINDER, default=[],
                        help="extra flags for examples/pretrain.py in --curves (e.g. --max_train_samples 512)")
    args = parser.parse_args(argv)
    if args.curves < 0:
        parser.error(f"--curves must be >= 0, got {args.curves}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"bf16 = torch.autocast('cpu', torch.bfloat16), float32 master weights")
    if args.curves:
        from mage_hf import DEFAULT_MODEL_PATH

        vqvae = args.vqvae or str(DEFAULT_MODEL_PATH)
        with tempfile.TemporaryDirectory() as scratch:
            work_dir = Path(args.work_dir or scratch)
            result = loss_curves(args.curves, work_dir, vqvae, args.train_data, args.pretrain_args, args.curve_window)
        text = curves_table(result)
        if args.plot:
            save_plot(result, Path(args.plot))
    else:
        rounds = args.rounds or (2 if args.quick else 5)
        steps_per_round = args.steps_per_round or (1 if args.quick else 2)
        result = {"rows": speed_rows(args.quick, rounds, steps_per_round, args.vitb_batch)}
        text = speed_table(result["rows"])
    result["header"] = header
    print(f"{header}\n\n{text}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
