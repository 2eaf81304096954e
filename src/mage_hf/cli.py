"""`mage-hf`: the everyday jobs from the command line.

    mage-hf generate [--model DIR_OR_REPO] [--num-images N] [--class-label L ...] [--seed S] --out FILE.png|DIR
    mage-hf inpaint  --image IMG [--mask MASK | --outpaint-box L T R B] --out FILE.png|DIR [--strength F] [--blend]
    mage-hf embed    --images FILES_OR_DIRS ... --out FEATURES.npy|.safetensors
    mage-hf convert  ...   (see `mage-hf convert --help`; delegates to `mage_hf.convert_original`)

With no `--model`, the pipeline folder shipped in the package (`mage_hf.DEFAULT_MODEL_PATH`) is used. Image `i`
is generated with `torch.Generator().manual_seed(seed + i)`, so its tokens do not depend on `--batch-size` (its
pixels only up to the VQ decoder's float rounding).
Existing outputs are never overwritten unless `--overwrite` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
from pathlib import Path

logger = logging.getLogger("mage_hf.cli")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DTYPES = ("float32", "float16", "bfloat16")


class CLIError(Exception):
    """A user error: reported on one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------- helpers
def _resolve_model(model: str | None) -> str:
    """`--model` (a folder, or a Hub repo id `owner/name`), or the embedded default."""
    if model is not None:
        looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep in model.replace("/", "")
        if looks_like_path and not os.path.isdir(os.path.expanduser(model)):
            raise CLIError(f"--model {model}: no such folder")
        return os.path.expanduser(model)
    from . import DEFAULT_MODEL_PATH

    if not os.path.isdir(DEFAULT_MODEL_PATH):
        raise CLIError(
            f"no --model given and the embedded default model is missing ({DEFAULT_MODEL_PATH} does not exist); "
            "pass --model DIR_OR_REPO (a pipeline folder or Hub repo id)"
        )
    return DEFAULT_MODEL_PATH


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _parse_class_labels(values: list[str] | None) -> list[int | str] | None:
    """`--class-label` values: integers become ids, anything else a class name (`id2label`)."""
    if not values:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def _cycled(labels: list | None, start: int, count: int) -> list | None:
    """The labels of images start .. start + count - 1 when `labels` are cycled over the images."""
    return None if labels is None else [labels[i % len(labels)] for i in range(start, start + count)]


def _planned_outputs(out: Path, count: int) -> list[Path]:
    """The files a run writes: one grid PNG (`out` ends with .png) or `count` PNGs in the folder `out`."""
    suffix = out.suffix.lower()
    if suffix == ".png":
        return [out]
    if suffix in IMAGE_SUFFIXES:
        raise CLIError(f"--out must end with .png (one grid image) or name a folder, got {out}")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    width = max(5, len(str(count - 1)))
    return [out / f"{i:0{width}d}.png" for i in range(count)]


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise CLIError(f"refusing to overwrite {shown}; pass --overwrite")


def image_grid(images: list, columns: int | None = None):
    """PIL images of one size -> one grid image, `columns` wide (default ceil(sqrt(n)))."""
    from PIL import Image

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def _save_images(images: list, out: Path, paths: list[Path]) -> str:
    if len(paths) == 1 and paths[0] == out:
        out.parent.mkdir(parents=True, exist_ok=True)
        (image_grid(images) if len(images) > 1 else images[0]).save(out)
        return f"wrote {len(images)} image(s) to {out}"
    out.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, paths):
        image.save(path)
    return f"wrote {len(images)} image(s) to {out}{os.sep}"


def _load_pipeline(cls, args):
    model = _resolve_model(args.model)
    pipe = cls.from_pretrained(model, torch_dtype=_dtype(args.dtype))
    pipe.to(_device(args.device))
    return pipe


def _generators(seed: int, start: int, count: int):
    import torch

    return [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]


# ---------------------------------------------------------------------------------------------------- commands
def run_generate(args) -> str:
    from tqdm.auto import tqdm

    from .pipeline_mage import MagePipeline

    if args.num_images < 1 or args.batch_size < 1:
        raise CLIError("--num-images and --batch-size must be >= 1")
    paths = _planned_outputs(Path(args.out), args.num_images)
    _refuse_overwrite(paths, args.overwrite)
    pipe = _load_pipeline(MagePipeline, args)
    labels = _parse_class_labels(args.class_label)
    many_batches = args.num_images > args.batch_size
    pipe.set_progress_bar_config(disable=many_batches)
    images = []
    with tqdm(total=args.num_images, unit="img", disable=not many_batches) as bar:
        for start in range(0, args.num_images, args.batch_size):
            count = min(args.batch_size, args.num_images - start)
            batch_labels = _cycled(labels, start, count)
            images += pipe(
                batch_size=count, num_inference_steps=args.steps, generator=_generators(args.seed, start, count),
                class_labels=batch_labels, guidance_scale=args.guidance_scale,
                choice_temperature=args.choice_temperature,
            ).images
            bar.update(count)
    return _save_images(images, Path(args.out), paths)


def run_inpaint(args) -> str:
    from PIL import Image

    from .pipeline_mage_inpaint import MageInpaintPipeline

    if args.num_images < 1:
        raise CLIError("--num-images must be >= 1")
    paths = _planned_outputs(Path(args.out), args.num_images)
    _refuse_overwrite(paths, args.overwrite)
    if args.mask is None and args.outpaint_box is None and args.strength >= 1.0:
        raise CLIError("without --mask or --outpaint-box, pass --strength < 1 (the fraction of tokens re-sampled)")
    image = Image.open(args.image).convert("RGB")
    mask = Image.open(args.mask).convert("L") if args.mask else None
    if mask is not None and mask.size != image.size:
        raise CLIError(f"--mask is {mask.size[0]}x{mask.size[1]} but --image is {image.size[0]}x{image.size[1]}; "
                       "they must have the same size")
    pipe = _load_pipeline(MageInpaintPipeline, args)
    size = pipe.transformer.config.image_size
    if args.resize and args.outpaint_box is None:
        image = image.resize((size, size), Image.BICUBIC)
        mask = mask.resize((size, size), Image.NEAREST) if mask is not None else None
    options = dict(
        num_inference_steps=args.steps, generator=_generators(args.seed, 0, args.num_images),
        class_labels=_cycled(_parse_class_labels(args.class_label), 0, args.num_images),
        guidance_scale=args.guidance_scale, choice_temperature=args.choice_temperature, strength=args.strength,
        blend_unmasked_pixels=args.blend,
    )
    if args.outpaint_box is not None:
        images = pipe.outpaint(image, box=tuple(args.outpaint_box), **options).images
    else:
        images = pipe(image, mask, **options).images
    return _save_images(images, Path(args.out), paths)


def _image_files(inputs: list[str]) -> list[Path]:
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise CLIError(f"--images: {item} is neither a file nor a folder")
    if not files:
        raise CLIError(f"--images: no image files found in {inputs}")
    return files


def _embedding_processor(model: str, subfolder: str | None, config):
    """The saved `MageImageProcessor` if there is one, else one matching `config.image_size`; None when this
    build has no `MageImageProcessor` (then `_pil_to_pixels` does the same resize + centre crop)."""
    try:
        from .image_processing_mage import MageImageProcessor
    except ImportError:
        return None
    for kwargs in ({"subfolder": subfolder}, {}) if subfolder else ({},):
        try:
            return MageImageProcessor.from_pretrained(model, **kwargs)
        except (OSError, ValueError):
            continue
    return MageImageProcessor.from_mage_config(config)


def _pil_to_pixels(images: list, image_size: int):
    """Fallback preprocessing: shortest edge to `image_size` (bicubic), centre crop, [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for image in images:
        scale = image_size / min(image.size)
        new_size = (max(image_size, round(image.width * scale)), max(image_size, round(image.height * scale)))
        resized = image.resize(new_size, Image.BICUBIC)
        left, top = (resized.width - image_size) // 2, (resized.height - image_size) // 2
        arrays.append(np.asarray(resized.crop((left, top, left + image_size, top + image_size)), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def run_embed(args) -> str:
    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from .modeling_mage import MageModel

    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        raise CLIError(f"--out must end with .npy or .safetensors, got {out}")
    _refuse_overwrite([out], args.overwrite)
    files = _image_files(args.images)
    model_path = _resolve_model(args.model)
    subfolder = None if (Path(model_path) / "config.json").is_file() else "transformer"
    model = MageModel.from_pretrained(model_path, subfolder=subfolder).eval()
    # The tokenizer stays float32 (token ids must not depend on the dtype); the transformer runs in --dtype.
    for name, module in model.named_children():
        if name != "vqvae":
            module.to(_dtype(args.dtype))
    device = _device(args.device)
    model.to(device)
    size = model.config.image_size
    processor = _embedding_processor(model_path, subfolder, model.config)
    features = []
    for start in tqdm(range(0, len(files), args.batch_size), unit="batch"):
        images = [Image.open(f).convert("RGB") for f in files[start : start + args.batch_size]]
        if processor is not None:
            pixels = processor(images, return_tensors="pt")["pixel_values"]
        else:
            pixels = _pil_to_pixels(images, size)
        with torch.no_grad():
            pooled = model(pixel_values=pixels.to(device, torch.float32)).pooler_output
        features.append(pooled.float().cpu())
    features = torch.cat(features)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, features.numpy())
    else:
        from safetensors.torch import save_file

        save_file({"features": features.contiguous()}, str(out), metadata={"files": json.dumps([str(f) for f in files])})
    return f"wrote {tuple(features.shape)} features of {len(files)} image(s) to {out}"


def _convert_entry_points():
    """`(add_convert_arguments, convert_from_args)` from `mage_hf.convert_original`, or None where this build
    lacks them (then `mage-hf convert` reports that conversion is unavailable)."""
    try:
        from . import convert_original
    except ImportError:
        return None
    add = getattr(convert_original, "add_convert_arguments", None)
    run = getattr(convert_original, "convert_from_args", None)
    return (add, run) if add is not None and run is not None else None


def run_convert(args) -> str:
    entry = _convert_entry_points()
    if entry is None:
        raise CLIError(
            "conversion is not available: mage_hf.convert_original has no add_convert_arguments/convert_from_args"
        )
    output = entry[1](args, command=args.command_line)
    return f"converted {args.checkpoint} to {output}"


# ---------------------------------------------------------------------------------------------------- parser
def _add_model_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--model", default=None, help="pipeline folder or Hub repo id (default: the embedded model)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="transformer dtype (the VQGAN stays float32)")


def _add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=12, help="decoding steps (12 in the original script)")
    parser.add_argument("--class-label", nargs="+", default=None, metavar="L",
                        help="class ids or names for class-conditional models (cycled over the images)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance weight")
    parser.add_argument("--choice-temperature", type=float, default=None,
                        help="Gumbel noise on the confidence (default: the scheduler's config)")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--num-images", type=int, default=1, help="images to generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mage-hf", description="MAGE generation, editing, embeddings and conversion.")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    commands = parser.add_subparsers(dest="command", required=True)
    out_images = "FILE.png for one grid image, or a folder for one PNG per image"

    generate = commands.add_parser("generate", help="generate images")
    _add_model_options(generate, out_images)
    _add_sampling_options(generate)
    generate.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    generate.set_defaults(func=run_generate)

    inpaint = commands.add_parser("inpaint", help="regenerate the masked part of an image, outpaint, or make variations")
    _add_model_options(inpaint, out_images)
    _add_sampling_options(inpaint)
    inpaint.add_argument("--image", required=True, help="the image (the model's size, or pass --resize)")
    region = inpaint.add_mutually_exclusive_group()
    region.add_argument("--mask", default=None, help="mask image, white = regenerate; omit for variations")
    region.add_argument("--outpaint-box", type=int, nargs=4, default=None, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
                        help="outpainting: put the image (resized) into this box of the canvas, generate the rest")
    inpaint.add_argument("--strength", type=float, default=1.0, help="fraction of the masked tokens re-sampled")
    inpaint.add_argument("--blend", action="store_true", help="paste the original pixels back outside the mask")
    inpaint.add_argument("--resize", action="store_true", help="resize image and mask to the model's size")
    inpaint.set_defaults(func=run_inpaint)

    embed = commands.add_parser("embed", help="MageModel pooled features (the linear-probe feature) of images")
    _add_model_options(embed, "FEATURES.npy or FEATURES.safetensors (rows in file order)")
    embed.add_argument("--images", nargs="+", required=True, help="image files and/or folders (sorted)")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.set_defaults(func=run_embed)

    convert = commands.add_parser("convert", help="convert an original MAGE checkpoint into a mage-hf folder")
    entry = _convert_entry_points()
    if entry is not None:
        entry[0](convert)
    convert.set_defaults(func=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["mage-hf", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mage_hf").setLevel(args.log_level)
    try:
        message = args.func(args)
    except (CLIError, ValueError, TypeError, OSError) as error:
        logger.debug("failure", exc_info=True)
        parser.exit(2, f"mage-hf {args.command}: error: {error}\n")
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
