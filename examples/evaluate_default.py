#!/usr/bin/env python
"""Measure the embedded default model (or any Fashion-MNIST MAGE pipeline folder) on the Fashion-MNIST test split.

    python examples/evaluate_default.py --data ../shared/data/fashion_mnist.npz --out results/default_eval.json

Prints a Markdown table (the README's results table) with, for the model and for raw pixels where that applies:
- tokenizer reconstruction PSNR (test images through tokenize -> decode_tokens);
- masked-token accuracy (argmax at masked positions, MAGE's masking with a fixed seed, and at fixed ratios);
- linear probe: standardised logistic regression on `pooler_output` vs on raw pixels (full train split);
- 5-way 1-shot and 5-shot prototypes (cosine to class means, 600 episodes, 15 queries) vs raw pixels;
- class-conditional samples: accuracy of a CNN trained here on real training images at labelling samples as the
  requested class, and a Frechet distance to the test images in that CNN's 128-d penultimate feature space
  ("FID-FMNIST-CNN": the same formula as FID, a feature space we can build offline), for unconditional and
  guided sampling;
- generation time per image on this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np
import torch

from mage_hf import DEFAULT_MODEL_PATH, MagePipeline
from mage_hf.training.transforms import ImageTransformConfig, MageImageTransform
from mage_hf.evaluation import (
    extract_features,
    frechet_distance,
    logistic_regression_probe,
    prototype_few_shot,
    psnr,
    reconstruct,
    standardize,
)
from mage_hf.sample_quality import JUDGE_FILE_HELP, judge_outputs, judge_samples, load_or_train_sample_judge

logger = logging.getLogger("evaluate_default")


def to_pixels(images: np.ndarray, size: int) -> torch.Tensor:
    """(N, 28, 28) uint8 grey -> (N, 3, size, size) in [0, 1], with the training loader's deterministic transform."""
    transform = MageImageTransform(ImageTransformConfig(image_size=size, random_crop=False, horizontal_flip=False))
    return torch.stack([transform(image) for image in images])


@torch.no_grad()
def masked_token_accuracy(transformer, token_ids: torch.Tensor, mask_ratio: float | None, seed: int, batch_size: int = 500) -> float:
    """Argmax accuracy at masked positions. `mask_ratio=None` samples MAGE's pre-training masks (with dropping);
    a number masks that fraction of tokens at random, nothing dropped (the generation-time input)."""
    config = transformer.config
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    for start in range(0, len(token_ids), batch_size):
        labels = token_ids[start : start + batch_size]
        batch = len(labels)
        if mask_ratio is None:
            token_mask, drop_mask = transformer.sample_masks(batch, labels.device, generator)
        else:
            num_masked = int(round(mask_ratio * config.num_tokens))
            ranks = torch.rand(batch, config.num_tokens, generator=generator).argsort(1).argsort(1)
            token_mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), ranks < num_masked], dim=1)
            drop_mask = None
        input_ids = transformer.mage.build_input_ids(torch.where(token_mask[:, 1:], config.mask_token_id, labels))
        logits = transformer(input_ids=input_ids, token_drop_mask=drop_mask).logits[:, 1:, : config.codebook_size]
        hits = (logits.argmax(-1) == labels) & token_mask[:, 1:]
        correct += int(hits.sum())
        total += int(token_mask[:, 1:].sum())
    return correct / total


def generate(pipe: MagePipeline, labels: list[int] | None, count: int, guidance: float | None, steps: int, seed: int,
             batch_size: int, guidance_schedule: str | None = None) -> torch.Tensor:
    """`count` samples (count, 3, S, S) in [0, 1], sample i seeded with `seed + i`; `guidance=None` (and
    `guidance_schedule=None`) is the plain call: the pipeline's saved default guidance."""
    images = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(size)]
        batch_labels = None if labels is None else labels[start : start + size]
        out = pipe(batch_size=size, class_labels=batch_labels, guidance_scale=guidance, num_inference_steps=steps,
                   guidance_schedule=guidance_schedule, generator=generators, output_type="pt")
        images.append(out.images)
    return torch.cat(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_PATH, help="pipeline folder (default: the embedded model)")
    parser.add_argument("--data", required=True, help="fashion_mnist.npz (examples/prepare_fashion_mnist.py)")
    parser.add_argument("--out", help="write the numbers as JSON here")
    parser.add_argument("--samples-per-class", type=int, default=100)
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 3.0, 5.0, 8.0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--judge-epochs", type=int, default=3)
    parser.add_argument("--judge", default=None, help=JUDGE_FILE_HELP)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-train-samples", type=int, default=None, help="subsample the train split (quick runs)")
    parser.add_argument("--max-test-samples", type=int, default=None, help="subsample the test split (quick runs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not os.path.isfile(args.data):
        parser.error(f"--data {args.data} does not exist")
    results: dict = {"model": os.path.abspath(args.model), "data": os.path.abspath(args.data)}

    data = np.load(args.data)
    x_train, y_train, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    x_train, y_train = x_train[: args.max_train_samples], y_train[: args.max_train_samples]
    x_test, y_test = x_test[: args.max_test_samples], y_test[: args.max_test_samples]
    results["num_train"], results["num_test"] = len(x_train), len(x_test)
    pipe = MagePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    transformer, vqvae = pipe.transformer.eval(), pipe.vqvae.eval()
    size = transformer.config.image_size
    test_pixels = to_pixels(x_test, size)

    # Tokenizer.
    test_tokens, recon = reconstruct(vqvae, test_pixels)
    results["tokenizer_psnr_db"] = float(psnr(recon, test_pixels).mean())
    logger.info("tokenizer PSNR %.2f dB", results["tokenizer_psnr_db"])

    # Masked-token accuracy.
    results["masked_token_accuracy_pretraining_masks"] = masked_token_accuracy(transformer, test_tokens, None, args.seed)
    for ratio in (0.5, 0.75):
        results[f"masked_token_accuracy_ratio_{ratio}"] = masked_token_accuracy(transformer, test_tokens, ratio, args.seed)
    logger.info("masked-token accuracy %s", {k: round(v, 4) for k, v in results.items() if k.startswith("masked")})

    # Linear probe and few-shot, on features and on raw pixels.
    start = time.perf_counter()
    train_features = extract_features(transformer.mage, to_pixels(x_train, size))
    test_features = extract_features(transformer.mage, test_pixels)
    results["embedding_images_per_second"] = (len(x_train) + len(x_test)) / (time.perf_counter() - start)
    raw_train = torch.from_numpy(x_train.reshape(len(x_train), -1).astype(np.float32) / 255)
    raw_test = torch.from_numpy(x_test.reshape(len(x_test), -1).astype(np.float32) / 255)
    y_train_t, y_test_t = torch.from_numpy(y_train), torch.from_numpy(y_test)
    results["linear_probe_accuracy"] = logistic_regression_probe(train_features, y_train_t, test_features, y_test_t)
    results["linear_probe_accuracy_raw_pixels"] = logistic_regression_probe(raw_train, y_train_t, raw_test, y_test_t)
    logger.info("linear probe %.4f (raw %.4f)", results["linear_probe_accuracy"], results["linear_probe_accuracy_raw_pixels"])
    for k in (1, 5):
        for name, (support, query) in {"": (train_features.numpy(), test_features.numpy()),
                                       "_raw_pixels": (raw_train.numpy(), raw_test.numpy())}.items():
            mean, interval = prototype_few_shot(support, y_train, query, y_test, 5, k, args.episodes, seed=args.seed)
            results[f"five_way_{k}_shot{name}"] = [mean, interval]
            # A second protocol, applied to both columns: the linear probe's standardisation before the cosine.
            support, query = standardize(support, query)
            mean, interval = prototype_few_shot(support, y_train, query, y_test, 5, k, args.episodes, seed=args.seed)
            results[f"five_way_{k}_shot_standardised{name}"] = [mean, interval]
    logger.info("few-shot %s", {k: v for k, v in results.items() if k.startswith("five_way")})

    # Class-conditional sample quality, judged by a CNN trained on real training images.
    train_grey = to_pixels(x_train, size)[:, :1]
    num_classes = len(data["class_names"])
    judge = load_or_train_sample_judge(args.judge, train_grey, y_train_t, args.judge_epochs, args.seed, num_classes)
    test_logits, test_judge_features = judge_outputs(judge, test_pixels[:, :1])
    results["judge_test_accuracy"] = float((test_logits.argmax(1) == y_test_t).float().mean())
    requested = [c for c in range(num_classes) for _ in range(args.samples_per_class)]
    count = len(requested)
    start = time.perf_counter()
    unconditional = generate(pipe, None, count, 1.0, args.steps, args.seed, 100)
    results["generation_seconds_per_image_batch100"] = (time.perf_counter() - start) / count
    _, uncond_features = judge_outputs(judge, unconditional.mean(1, keepdim=True))
    results["fid_fmnist_cnn_unconditional"] = frechet_distance(uncond_features, test_judge_features)
    results["samples"] = {}
    guidance_default, schedule_default = pipe.resolve_guidance(None, None)
    results["default_guidance"] = {"guidance_scale": guidance_default, "guidance_schedule": schedule_default}
    # "default": the plain call `pipe(class_labels=...)`, with the guidance saved in the model's model_index.json.
    for guidance in ["default", *args.guidance_scales]:
        samples = generate(pipe, requested, count, None if guidance == "default" else guidance, args.steps,
                           args.seed + 10**6, 100)
        quality = judge_samples(judge, samples.mean(1, keepdim=True), torch.tensor(requested), test_judge_features)
        results["samples"][str(guidance)] = {"class_accuracy": quality.class_accuracy, "fid_fmnist_cnn": quality.fid}
        logger.info("guidance %s: %s", guidance, results["samples"][str(guidance)])
    start = time.perf_counter()
    generate(pipe, None, 4, 1.0, args.steps, args.seed, 1)
    results["generation_seconds_per_image_batch1"] = (time.perf_counter() - start) / 4
    results["torch_threads"] = torch.get_num_threads()

    print(format_table(results, args))  # the script's product: the README's results table
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)


def format_table(results: dict, args) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    shot = lambda v: f"{100 * v[0]:.1f}% ± {100 * v[1]:.1f}"  # noqa: E731
    rows = [
        ("tokenizer reconstruction PSNR (test)", f"{results['tokenizer_psnr_db']:.2f} dB", ""),
        ("masked-token accuracy, pre-training masks", pct(results["masked_token_accuracy_pretraining_masks"]), ""),
        ("masked-token accuracy, 50% / 75% masked", f"{pct(results['masked_token_accuracy_ratio_0.5'])} / "
         f"{pct(results['masked_token_accuracy_ratio_0.75'])}", ""),
        ("linear probe (standardised logistic regression on the train images)", pct(results["linear_probe_accuracy"]),
         pct(results["linear_probe_accuracy_raw_pixels"])),
        (f"5-way 1-shot, prototypes ({args.episodes} episodes)", shot(results["five_way_1_shot"]),
         shot(results["five_way_1_shot_raw_pixels"])),
        (f"5-way 5-shot, prototypes ({args.episodes} episodes)", shot(results["five_way_5_shot"]),
         shot(results["five_way_5_shot_raw_pixels"])),
        (f"5-way 1-shot, prototypes of standardised features ({args.episodes} episodes)",
         shot(results["five_way_1_shot_standardised"]), shot(results["five_way_1_shot_standardised_raw_pixels"])),
        (f"5-way 5-shot, prototypes of standardised features ({args.episodes} episodes)",
         shot(results["five_way_5_shot_standardised"]), shot(results["five_way_5_shot_standardised_raw_pixels"])),
        ("judge CNN accuracy on real test images", pct(results["judge_test_accuracy"]), ""),
        ("FID-FMNIST-CNN, unconditional samples", f"{results['fid_fmnist_cnn_unconditional']:.2f}", ""),
    ]
    default = results["default_guidance"]
    for guidance, numbers in results["samples"].items():
        if guidance == "default":
            guidance = (f"default call (saved guidance {default['guidance_scale']:g}, "
                        f"{default['guidance_schedule']})")
        else:
            guidance = f"guidance {guidance}"
        rows.append((f"class-conditional, {guidance}: {args.samples_per_class} samples per class recognised as requested",
                     pct(numbers["class_accuracy"]), ""))
        rows.append((f"class-conditional, {guidance}: FID-FMNIST-CNN", f"{numbers['fid_fmnist_cnn']:.2f}", ""))
    rows += [
        (f"generation, {args.steps} steps, batch 100 (s / image)", f"{results['generation_seconds_per_image_batch100']:.4f}", ""),
        (f"generation, {args.steps} steps, batch 1 (s / image)", f"{results['generation_seconds_per_image_batch1']:.4f}", ""),
        ("embedding throughput (images / s)", f"{results['embedding_images_per_second']:.0f}", ""),
    ]
    header = f"| measure (Fashion-MNIST, {results['num_train']} train / {results['num_test']} test images) | model | raw pixels |"
    lines = [header, "|---|---|---|"]
    lines += [f"| {name} | {value} | {baseline} |" for name, value, baseline in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
