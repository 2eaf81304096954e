"""Generate many images (e.g. 50k for FID) with a MAGE pipeline, across processes.

    accelerate launch examples/generate_many.py --model DIR --num-images 50000 --out DIR [--batch-size 64]
        [--steps 12] [--choice-temperature 4.5] [--seed 0] [--class-label L ...] [--guidance-scale G] [--dtype bfloat16]

Image `i` is `OUT/{i:05d}.png`, generated with its own `torch.Generator().manual_seed(seed + i)`: its tokens do
not depend on the number of processes or the batch size. Batches are fixed (indices [k * B, (k + 1) * B)) and
whole batches are split between the processes (`PartialState.split_between_processes`), so for a given
`--batch-size` the PNG files are byte-identical whatever the number of processes (with another batch size the
VQ decoder's float rounding may move a few pixel values by one level).

Resumable: batches whose PNGs all exist are skipped, and each PNG is written to a temporary file and renamed, so
an interrupted run never leaves a truncated PNG.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from mage_hf import MagePipeline

logger = get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="pipeline folder or Hub repo id")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--out", required=True, help="output folder (created; existing PNGs are kept and skipped)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass, per process")
    parser.add_argument("--steps", type=int, default=12, help="decoding steps")
    parser.add_argument("--choice-temperature", type=float, default=None, help="default: the scheduler's config")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--class-label", nargs="+", default=None, help="ids/names, cycled over image indices")
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="transformer dtype (the VQGAN stays float32)")
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.batch_size < 1:
        parser.error("--num-images and --batch-size must be >= 1")
    return args


def image_path(out: Path, index: int, num_images: int) -> Path:
    return out / f"{index:0{max(5, len(str(num_images - 1)))}d}.png"


def save_atomically(image, path: Path) -> None:
    """Write a PNG next to `path` under a temporary name, then rename it into place."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def class_labels_for(indices: list[int], labels: list[str] | None):
    if not labels:
        return None
    parsed = [int(v) if v.lstrip("-").isdigit() else v for v in labels]
    return [parsed[i % len(parsed)] for i in indices]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    state = PartialState()
    out = Path(args.out)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    pipe = MagePipeline.from_pretrained(args.model, torch_dtype=getattr(torch, args.dtype))
    pipe.to(state.device)
    pipe.set_progress_bar_config(disable=True)

    # Batches have a fixed composition (indices [k * B, (k + 1) * B)) and whole batches are split between the
    # processes, so each image comes out of the same batch, bit for bit, whatever the number of processes.
    batches = [list(range(s, min(s + args.batch_size, args.num_images))) for s in range(0, args.num_images, args.batch_size)]
    with state.split_between_processes(batches) as my_batches:
        # One bar per machine (the main process's share); others log when they finish.
        for indices in tqdm(my_batches, unit="batch", disable=not state.is_local_main_process):
            missing = [i for i in indices if not image_path(out, i, args.num_images).exists()]
            if missing:
                # The whole batch is regenerated (same composition, same pixels); only missing files are written.
                images = pipe(
                    batch_size=len(indices),
                    num_inference_steps=args.steps,
                    generator=[torch.Generator().manual_seed(args.seed + i) for i in indices],
                    class_labels=class_labels_for(indices, args.class_label),
                    guidance_scale=args.guidance_scale,
                    choice_temperature=args.choice_temperature,
                ).images
                for index, image in zip(indices, images):
                    if index in missing:
                        save_atomically(image, image_path(out, index, args.num_images))
        logger.info(f"process {state.process_index}: {sum(map(len, my_batches))} image(s) done", main_process_only=False)
    state.wait_for_everyone()
    logger.info(f"all {args.num_images} images are in {out}")  # main process only


if __name__ == "__main__":
    main()
