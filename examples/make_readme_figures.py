#!/usr/bin/env python
"""Draw the README's pictures from a Fashion-MNIST MAGE pipeline (the embedded default model by default).

    python examples/make_readme_figures.py --data ../shared/data/fashion_mnist.npz --out docs/images \
        [--model DIR] [--train-log runs/default_mage/trainer_state.json] [--vq-log runs/default_vq/train_log.jsonl]

Writes (PNG, nearest-neighbour enlarged so the 32 px images stay crisp):
- `samples_per_class.png`: one row per class, class-conditional samples at the default call (the saved guidance);
- `samples_unconditional.png`: unconditional samples (fake class token);
- `reconstructions.png`: test images (odd rows) and their VQ tokenizer reconstructions (even rows);
- `inpainting.png`: per column: image, region to regenerate (red), result; and outpainting from the centre;
- `mage_steps.png`: what MAGE does: image, its tokens decoded, 60% of tokens masked (grey), the tokens MAGE fills in;
- `training_curves.png`: tokenizer and MAGE losses over training steps (when logs are given);
- `decoder_comparison.png` (with `--compare-vqvae DIR`, a tokenizer with the same encoder and codebook, e.g. from
  `train_tokenizer.py --train_decoder_only`): test images and class-conditional samples, each token grid decoded by
  the model's decoder and by DIR's.

`--figures NAME ...` draws only some of them (names without `.png`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from mage_hf import DEFAULT_MODEL_PATH, MageInpaintPipeline, MagePipeline, MageVQModel
from mage_hf.training.transforms import ImageTransformConfig, MageImageTransform

logger = logging.getLogger("make_readme_figures")

SCALE = 3  # pixels per image pixel in the figures
PAD = 2
FIGURES = ("samples_per_class", "samples_unconditional", "reconstructions", "inpainting", "mage_steps",
           "training_curves", "decoder_comparison")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def grid(rows: list[np.ndarray], labels: list[str] | None = None, label_width: int = 0) -> Image.Image:
    """Rows of (N, H, W, 3) uint8 images -> one picture with a white gutter and optional row labels."""
    height, width = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    cell_h, cell_w = height * SCALE + PAD, width * SCALE + PAD
    canvas = Image.new("RGB", (label_width + cols * cell_w + PAD, len(rows) * cell_h + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        if labels:
            draw.text((4, r * cell_h + cell_h // 2 - 6), labels[r], fill="black")
        for c, image in enumerate(row):
            tile = Image.fromarray(image).resize((width * SCALE, height * SCALE), Image.NEAREST)
            canvas.paste(tile, (label_width + PAD + c * cell_w, PAD + r * cell_h))
    return canvas


def test_pixels(data: dict, size: int, count: int, seed: int) -> torch.Tensor:
    transform = MageImageTransform(ImageTransformConfig(image_size=size, random_crop=False, horizontal_flip=False))
    index = np.random.default_rng(seed).choice(len(data["x_test"]), count, replace=False)
    return torch.stack([transform(data["x_test"][i]) for i in index])


def line_plot(series: dict[str, list[tuple[float, float]]], title: str, size=(520, 300)) -> Image.Image:
    """A minimal line chart (PIL only): {name: [(x, y), ...]} on a shared x axis, y on a log scale."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 60, 28, size[0] - 12, size[1] - 34
    xs = [x for points in series.values() for x, _ in points]
    ys = [np.log10(max(y, 1e-8)) for points in series.values() for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    span_x, span_y = max(x1 - x0, 1e-9), max(y1 - y0, 1e-9)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    for tick in np.linspace(y0, y1, 4):
        y = bottom - (tick - y0) / span_y * (bottom - top)
        draw.text((4, y - 6), f"{10 ** tick:.3g}", fill="black")
    draw.text((left, bottom + 8), f"step {x0:.0f}", fill="black")
    draw.text((right - 70, bottom + 8), f"step {x1:.0f}", fill="black")
    for k, (name, points) in enumerate(series.items()):
        coords = [(left + (x - x0) / span_x * (right - left), bottom - (np.log10(max(y, 1e-8)) - y0) / span_y * (bottom - top))
                  for x, y in points]
        draw.line(coords, fill=colours[k % len(colours)], width=2)
        draw.text((right - 150, top + 6 + 14 * k), name, fill=colours[k % len(colours)])
    return image


def read_curves(train_log: str | None, vq_log: str | None) -> list[Image.Image]:
    plots = []
    if vq_log and os.path.isfile(vq_log):
        with open(vq_log) as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        l1 = [(r["step"], r["l1"]) for r in records if "l1" in r]
        l2 = [(r["step"], r["l2"]) for r in records if "l2" in r]
        if l1:
            plots.append(line_plot({"L1": l1, "L2": l2}, "tokenizer reconstruction loss (train)"))
    if train_log and os.path.isfile(train_log):
        with open(train_log) as handle:
            history = json.load(handle)["log_history"]
        loss = [(r["step"], r["loss"]) for r in history if "loss" in r]
        if loss:
            plots.append(line_plot({"masked-token loss": loss}, "MAGE pre-training loss (label-smoothed CE)"))
    return plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL_PATH)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="folder for the PNG files (existing files are replaced)")
    parser.add_argument("--train-log", help="trainer_state.json of the MAGE run")
    parser.add_argument("--vq-log", help="train_log.jsonl of the tokenizer run")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="default: the guidance saved with the model (model_index.json), else 1")
    parser.add_argument("--compare-vqvae", help="a MageVQModel folder sharing the model's encoder and codebook")
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=None, help="default: all that apply")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    figures = set(args.figures or FIGURES)
    if "decoder_comparison" in figures and not args.compare_vqvae:
        if args.figures:
            parser.error("the decoder_comparison figure needs --compare-vqvae DIR")
        figures.discard("decoder_comparison")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.makedirs(args.out, exist_ok=True)
    data = np.load(args.data)
    pipe = MagePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.transformer.config.image_size
    names = [str(n) for n in data["class_names"]]
    per_row = 10

    if "samples_per_class" in figures:
        rows = []
        for class_id in range(len(names)):
            generators = [torch.Generator().manual_seed(args.seed + 100 * class_id + i) for i in range(per_row)]
            images = pipe(class_labels=[class_id] * per_row, guidance_scale=args.guidance_scale, generator=generators,
                          output_type="pt").images
            rows.append(to_uint8(images))
        grid(rows, names, label_width=80).save(os.path.join(args.out, "samples_per_class.png"))

    if "samples_unconditional" in figures:
        generators = [torch.Generator().manual_seed(args.seed + 5000 + i) for i in range(40)]
        images = to_uint8(pipe(batch_size=40, generator=generators, output_type="pt").images)
        grid([images[i : i + 10] for i in range(0, 40, 10)]).save(os.path.join(args.out, "samples_unconditional.png"))

    if "reconstructions" in figures:
        originals = test_pixels(data, size, 20, args.seed)
        with torch.no_grad():
            recon = pipe.vqvae.decode_tokens(pipe.vqvae.tokenize(originals)).clamp(0, 1)
        rows = [to_uint8(originals[:10]), to_uint8(recon[:10]), to_uint8(originals[10:]), to_uint8(recon[10:])]
        grid(rows).save(os.path.join(args.out, "reconstructions.png"))

    if "inpainting" in figures:
        inpaint = MageInpaintPipeline(**pipe.components)
        inpaint.set_progress_bar_config(disable=True)
        images = test_pixels(data, size, 8, args.seed + 1)
        masks = torch.zeros(8, 1, size, size)
        masks[:4, :, size // 2 :, :] = 1  # bottom half
        masks[4:, :, :, : size // 2] = 1  # left half
        generators = [torch.Generator().manual_seed(args.seed + 7000 + i) for i in range(8)]
        filled = inpaint(image=images, mask_image=masks, generator=generators, output_type="pt").images
        shown = images.clone()
        shown[:, 0] = torch.where(masks[:, 0] > 0, 0.5 + 0.5 * shown[:, 0], shown[:, 0])
        shown[:, 1:] = torch.where(masks > 0, 0.5 * shown[:, 1:], shown[:, 1:])
        outpainted = inpaint.outpaint(images, box=(size // 4, size // 4, 3 * size // 4, 3 * size // 4),
                                      generator=[torch.Generator().manual_seed(args.seed + 8000 + i) for i in range(8)],
                                      output_type="pt").images
        grid([to_uint8(images), to_uint8(shown), to_uint8(filled), to_uint8(outpainted)],
             ["image", "regenerate", "inpainted", "outpainted"], label_width=80).save(os.path.join(args.out, "inpainting.png"))

    if "mage_steps" in figures:
        # What MAGE does: tokens, masking, filling in.
        config = pipe.transformer.config
        images = test_pixels(data, size, 6, args.seed + 2)
        with torch.no_grad():
            tokens = pipe.vqvae.tokenize(images)
            decoded = pipe.vqvae.decode_tokens(tokens).clamp(0, 1)
            generator = torch.Generator().manual_seed(args.seed)
            masked = torch.rand(tokens.shape, generator=generator) < 0.6
            input_ids = pipe.transformer.mage.build_input_ids(torch.where(masked, config.mask_token_id, tokens))
            logits = pipe.transformer(input_ids=input_ids).logits[:, 1:, : config.codebook_size]
            predicted = torch.where(masked, logits.argmax(-1), tokens)
            filled = pipe.vqvae.decode_tokens(predicted).clamp(0, 1)
        factor = pipe.vqvae.downsample_factor
        pixel_mask = masked.view(-1, 1, config.token_grid_size, config.token_grid_size).float()
        pixel_mask = pixel_mask.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
        shown_masked = torch.where(pixel_mask > 0, torch.full_like(decoded, 0.5), decoded)
        grid([to_uint8(images), to_uint8(decoded), to_uint8(shown_masked), to_uint8(filled)],
             ["image", "VQ tokens", "60% masked", "MAGE fills"], label_width=80).save(os.path.join(args.out, "mage_steps.png"))

    plots = read_curves(args.train_log, args.vq_log) if "training_curves" in figures else []
    if plots:
        canvas = Image.new("RGB", (sum(p.width for p in plots), max(p.height for p in plots)), "white")
        x = 0
        for plot in plots:
            canvas.paste(plot, (x, 0))
            x += plot.width
        canvas.save(os.path.join(args.out, "training_curves.png"))
    if "decoder_comparison" in figures:
        draw_decoder_comparison(pipe, MageVQModel.from_pretrained(args.compare_vqvae).eval(), data, args.seed,
                                os.path.join(args.out, "decoder_comparison.png"))
    logger.info("wrote figures to %s", args.out)


@torch.no_grad()
def draw_decoder_comparison(pipe: MagePipeline, other: MageVQModel, data: dict, seed: int, path: str) -> None:
    """The same token grids through two decoders: 8 test images and 8 class-conditional samples (default call)."""
    images = test_pixels(data, pipe.transformer.config.image_size, 8, seed + 3)
    tokens = pipe.vqvae.tokenize(images)
    if not torch.equal(other.tokenize(images), tokens):
        raise ValueError("--compare-vqvae gives other token ids than the model's tokenizer: the decoders would not "
                         "see the same grids (expected a tokenizer from `train_tokenizer.py --train_decoder_only`)")
    generators = [torch.Generator().manual_seed(seed + 9000 + i) for i in range(8)]
    sampled = pipe(class_labels=list(range(8)), generator=generators, output_type="latent").images
    rows = [to_uint8(images)]
    for grid_tokens in (tokens, sampled):
        rows += [to_uint8(pipe.vqvae.decode_tokens(grid_tokens)), to_uint8(other.decode_tokens(grid_tokens))]
    labels = ["test image", "model decoder", "other decoder", "sample, model dec.", "sample, other dec."]
    grid(rows, labels, label_width=110).save(path)


if __name__ == "__main__":
    main()
