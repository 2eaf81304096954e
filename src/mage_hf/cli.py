"""`mage-hf`: the everyday jobs from the command line.

    mage-hf generate [--model DIR_OR_REPO] [--num-images N] [--class-label L ...] [--seed S] --out FILE.png|DIR
    mage-hf inpaint  --image IMG [--mask MASK | --outpaint L T R B | --outpaint-box L T R B] --out FILE.png|DIR
                     [--strength F] [--blend] [--resize]
    mage-hf embed    --images FILES_OR_DIRS ... --out FEATURES.npy|.safetensors [--skip-unreadable]
    mage-hf convert  ...   (see `mage-hf convert --help`; delegates to `mage_hf.convert_original`)

With no `--model`, the pipeline folder shipped in the package (`mage_hf.DEFAULT_MODEL_PATH`) is used. Image `i`
is generated with `torch.Generator().manual_seed(seed + i)`, so its tokens do not depend on `--batch-size` (its
pixels only up to the VQ decoder's float rounding). Images are generated and written batch by batch: a folder
output takes constant memory whatever `--num-images`; a grid PNG holds at most `MAX_GRID_IMAGES` images and
`MAX_GRID_PIXELS` pixels. Existing outputs are never overwritten unless `--overwrite` is given; every file is
written under a temporary name and renamed, so an interrupted run leaves no partial file.

Errors (bad options, unreadable files, a model folder whose weights do not match its config, ...) are one line on
stderr with exit status 2; `--log-level DEBUG` also logs the traceback.

Start-up: this module imports only the standard library; torch, transformers and diffusers are imported by the
command that needs them, so `mage-hf --help` returns at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import sys
from pathlib import Path

logger = logging.getLogger("mage_hf.cli")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DTYPES = ("float32", "float16", "bfloat16")
# A grid PNG is built in memory: at most this many images, and this many pixels (3 bytes each: ~400 MB).
MAX_GRID_IMAGES = 1024
MAX_GRID_PIXELS = 2**27
# `torch.Generator().manual_seed` takes seeds below 2**64; image i uses seed + i.
MAX_SEED = 2**63 - 1


class CLIError(Exception):
    """A user error: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`prog: error: ...`) instead of the usage block plus the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ---------------------------------------------------------------------------------------------- option types
def _number_type(convert, accepts, expected: str):
    """An argparse `type`: `convert(text)` (int or float) that `accepts(value)`, else one line naming `expected`."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = _number_type(int, lambda value: value >= 1, "a positive integer")
non_negative_int = _number_type(int, lambda value: 0 <= value <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")
non_negative_float = _number_type(float, lambda value: math.isfinite(value) and value >= 0, "a finite number >= 0")
unit_fraction = _number_type(float, lambda value: 0.0 <= value <= 1.0, "a number in [0, 1]")


# ---------------------------------------------------------------------------------------------- models, devices
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
    """`--device` -> a `torch.device` that works on this machine (checked before any model is loaded)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name}: not a device name; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                           "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        raise CLIError(f"--device {name}: cannot use this device ({str(error).splitlines()[0]})") from None
    return device


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def _quiet_library_loading(args, *libraries: str) -> None:
    """No per-file progress bars from the libraries' loaders (our own progress bar stays). Their load reports
    (missing/unexpected weights) are shown only with `--allow-mismatched-weights` or `--log-level DEBUG`: otherwise
    a mismatch is refused with one line."""
    import importlib

    for name in libraries:
        library_logging = importlib.import_module(f"{name}.utils.logging")
        library_logging.disable_progress_bar()
        if not args.allow_mismatched_weights and args.log_level != "DEBUG":
            library_logging.set_verbosity_error()


def _load_pipeline(cls, args, device):
    model = _resolve_model(args.model)
    _quiet_library_loading(args, "transformers", "diffusers")
    try:
        pipe = cls.from_pretrained(model, torch_dtype=_dtype(args.dtype),
                                   allow_mismatched_weights=args.allow_mismatched_weights)
    except ValueError as error:
        # the library names its keyword argument; here it is the command-line option
        text = _one_line(error).replace("`allow_mismatched_weights=True`", "--allow-mismatched-weights")
        raise CLIError(f"--model {model}: {text}") from error
    except OSError as error:
        raise CLIError(f"--model {model}: cannot load a MAGE pipeline folder ({_one_line(error)})") from error
    pipe.to(device)
    return pipe


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _generators(seed: int, start: int, count: int):
    import torch

    return [torch.Generator().manual_seed(seed + i) for i in range(start, start + count)]


def _check_seed(seed: int, count: int) -> None:
    if seed + count - 1 > MAX_SEED:
        raise CLIError(f"--seed {seed}: image i uses seed + i, which must stay <= {MAX_SEED}; got up to "
                       f"{seed + count - 1}")


def _parse_class_labels(values: list[str] | None) -> list[int | str] | None:
    """`--class-label` values: integers become ids, anything else a class name (`id2label`)."""
    if not values:
        return None
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def _cycled(labels: list | None, start: int, count: int) -> list | None:
    """The labels of images start .. start + count - 1 when `labels` are cycled over the images."""
    return None if labels is None else [labels[i % len(labels)] for i in range(start, start + count)]


# ---------------------------------------------------------------------------------------------- image outputs
def _save_atomic(save, path: Path) -> None:
    """`save(temporary_path)`, then rename onto `path`: an interrupted run never leaves a partial file."""
    from .atomic_io import atomic_output_path

    with atomic_output_path(path) as partial:
        save(Path(partial))


class ImageWriter:
    """Where the images of a run go: one grid PNG (`out` ends with .png) or one PNG per image in the folder `out`
    (`00000.png`, ...). Images are added batch by batch; a folder writes each at once, a grid pastes it into one
    canvas, so memory does not grow with the number of images beyond the grid itself."""

    def __init__(self, out: Path, count: int, overwrite: bool):
        self.out, self.count, self.written = out, count, 0
        suffix = out.suffix.lower()
        self.grid = suffix == ".png"
        if not self.grid and suffix in IMAGE_SUFFIXES:
            raise CLIError(f"--out must end with .png (one grid image) or name a folder, got {out}")
        if self.grid:
            if count > MAX_GRID_IMAGES:
                raise CLIError(f"--num-images {count}: a grid PNG holds at most {MAX_GRID_IMAGES} images; "
                               "pass a folder as --out to write one PNG per image")
            self.columns = math.ceil(math.sqrt(count))
            self.rows = math.ceil(count / self.columns)
            self.canvas = None
            if out.exists() and not overwrite:
                raise CLIError(f"refusing to overwrite {out}; pass --overwrite")
        else:
            if out.exists() and not out.is_dir():
                raise CLIError(f"--out {out} exists and is not a folder")
            self.width = max(5, len(str(count - 1)))
            existing = self._existing_outputs()
            if existing and not overwrite:
                shown = ", ".join(str(out / name) for name in existing[:3]) + (" ..." if len(existing) > 3 else "")
                raise CLIError(f"refusing to overwrite {shown}; pass --overwrite")

    def _existing_outputs(self) -> list[str]:
        """Names in the output folder that this run would write (one scan: `--num-images` may be huge)."""
        if not self.out.is_dir():
            return []
        pattern = re.compile(rf"\d{{{self.width}}}\.png")
        return sorted(entry.name for entry in os.scandir(self.out)
                      if pattern.fullmatch(entry.name) and int(entry.name[: self.width]) < self.count)

    def check_image_size(self, width: int, height: int) -> None:
        """Refuse, before anything is generated, a grid of `width` x `height` images over `MAX_GRID_PIXELS`."""
        if self.grid and self.columns * self.rows * width * height > MAX_GRID_PIXELS:
            raise CLIError(f"--num-images {self.count}: a {self.columns}x{self.rows} grid of {width}x{height} images "
                           f"has more than {MAX_GRID_PIXELS:,} pixels (the grid limit); pass a folder as --out")

    def add(self, images: list) -> None:
        if self.grid:
            self._paste(images)
        else:
            for image in images:
                path = self.out / f"{self.written:0{self.width}d}.png"
                _save_atomic(lambda p, image=image: image.save(p, format="PNG"), path)
                self.written += 1

    def _paste(self, images: list) -> None:
        from PIL import Image

        width, height = images[0].size
        if self.canvas is None:
            self.canvas = Image.new("RGB", (self.columns * width, self.rows * height))
        for image in images:
            i = self.written
            self.canvas.paste(image, ((i % self.columns) * width, (i // self.columns) * height))
            self.written += 1

    def finish(self) -> str:
        if self.grid:
            _save_atomic(lambda p: self.canvas.save(p, format="PNG"), self.out)
            return f"wrote {self.written} image(s) to {self.out}"
        return f"wrote {self.written} image(s) to {self.out}{os.sep}"


def _batches(count: int, batch_size: int):
    for start in range(0, count, batch_size):
        yield start, min(batch_size, count - start)


# ---------------------------------------------------------------------------------------------- commands
def run_generate(args) -> str:
    writer = ImageWriter(Path(args.out), args.num_images, args.overwrite)
    _check_seed(args.seed, args.num_images)
    device = _device(args.device)
    from tqdm.auto import tqdm

    from .pipeline_mage import MagePipeline

    pipe = _load_pipeline(MagePipeline, args, device)
    size = pipe.transformer.config.image_size
    writer.check_image_size(size, size)
    labels = _parse_class_labels(args.class_label)
    many_batches = args.num_images > args.batch_size
    # progress on a terminal only (`disable=None`), erased when done: the last line says what was written
    pipe.set_progress_bar_config(disable=True if many_batches else None, leave=False)
    with tqdm(total=args.num_images, unit="img", disable=None if many_batches else True, leave=False) as bar:
        for start, count in _batches(args.num_images, args.batch_size):
            writer.add(pipe(
                batch_size=count, num_inference_steps=args.steps, generator=_generators(args.seed, start, count),
                class_labels=_cycled(labels, start, count), guidance_scale=args.guidance_scale,
                choice_temperature=args.choice_temperature,
            ).images)
            bar.update(count)
    return writer.finish()


def _read_image(path: str, option: str):
    """An image file -> float32 RGB (H, W, 3) in [0, 1], every PIL mode at its own range (`mage_hf.image_io`)."""
    from .image_io import open_image, pil_to_rgb_array

    try:
        return pil_to_rgb_array(open_image(path))
    except ValueError as error:
        raise CLIError(f"{option}: {_one_line(error)}") from error


def _read_mask(path: str):
    """A mask file -> float32 grey (H, W) in [0, 1] (ITU-R 601 luma of the RGB pixels, as PIL's "L"); transparent
    pixels count as black (composited on black: kept), as in `MageInpaintPipeline`, so a mask painted on a
    transparent layer regenerates what is painted."""
    from .image_io import open_image, pil_to_rgb_array
    from .pipeline_mage_inpaint import MASK_LUMA_WEIGHTS

    try:
        rgb = pil_to_rgb_array(open_image(path), background=(0, 0, 0))
    except ValueError as error:
        raise CLIError(f"--mask: {_one_line(error)}") from error
    return (rgb @ MASK_LUMA_WEIGHTS).astype("float32")


def _resize(array, size: tuple[int, int], resample):
    """(H, W, C) float32 array -> `size` = (width, height), channel by channel in PIL's float mode."""
    import numpy as np
    from PIL import Image

    channels = [Image.fromarray(np.ascontiguousarray(array[..., c]), mode="F").resize(size, resample)
                for c in range(array.shape[-1])]
    return np.clip(np.stack([np.asarray(c, dtype=np.float32) for c in channels], -1), 0.0, 1.0)


def _fit_image(args, image, image_size: int):
    """The image (H, W, 3) at the size the chosen edit needs: `--resize` resizes it to the model's size
    (bicubic); a mask of another size than the image is resized to it by the pipeline (nearest, after the 0.5
    threshold); `--outpaint-box` resizes the image into its box itself."""
    from PIL import Image

    if args.outpaint_box is None and image.shape[:2] != (image_size, image_size):
        if args.resize:
            return _resize(image, (image_size, image_size), Image.BICUBIC)
        if args.outpaint is None:
            raise CLIError(f"--image {args.image} is {image.shape[1]}x{image.shape[0]} but the model takes "
                           f"{image_size}x{image_size} images; pass --resize")
    return image


def _inpaint_output_size(args, image_shape: tuple[int, int], image_size: int, factor: int) -> tuple[int, int]:
    """(width, height) of each output image: the model's size, or the extended canvas of `--outpaint` (each
    margin rounded up to whole `factor`-pixel token patches, as the pipeline does)."""
    if args.outpaint is None:
        return image_size, image_size
    left, top, right, bottom = (-(-margin // factor) * factor for margin in args.outpaint)
    return image_shape[1] + left + right, image_shape[0] + top + bottom


def run_inpaint(args) -> str:
    writer = ImageWriter(Path(args.out), args.num_images, args.overwrite)
    _check_seed(args.seed, args.num_images)
    editing = args.mask is not None or args.outpaint_box is not None or args.outpaint is not None
    if not editing and args.strength >= 1.0:
        raise CLIError("without --mask, --outpaint or --outpaint-box, pass --strength < 1 (the fraction of tokens "
                       "re-sampled)")
    if (args.outpaint is not None or args.outpaint_box is not None) and args.strength != 1.0:
        raise CLIError("--strength applies to --mask and variations, not to --outpaint / --outpaint-box")
    image = _read_image(args.image, "--image")
    mask = _read_mask(args.mask) if args.mask else None
    device = _device(args.device)
    from .pipeline_mage_inpaint import MageInpaintPipeline

    pipe = _load_pipeline(MageInpaintPipeline, args, device)
    pipe.set_progress_bar_config(disable=None, leave=False)
    size = pipe.transformer.config.image_size
    image = _fit_image(args, image, size)
    writer.check_image_size(*_inpaint_output_size(args, image.shape[:2], size, pipe.vqvae.downsample_factor))
    labels = _parse_class_labels(args.class_label)
    for start, count in _batches(args.num_images, args.batch_size):
        options = dict(
            num_inference_steps=args.steps, generator=_generators(args.seed, start, count),
            class_labels=_cycled(labels, start, count), guidance_scale=args.guidance_scale,
            choice_temperature=args.choice_temperature, blend_unmasked_pixels=args.blend,
        )
        if args.outpaint is not None:
            left, top, right, bottom = args.outpaint
            images = pipe.outpaint(image, left=left, top=top, right=right, bottom=bottom,
                                   window_stride=args.window_stride, **options).images
        elif args.outpaint_box is not None:
            images = pipe.outpaint(image, box=tuple(args.outpaint_box), **options).images
        else:
            images = pipe(image, mask, strength=args.strength, **options).images
        writer.add(images)
    return writer.finish()


def _image_files(inputs: list[str]) -> list[Path]:
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise CLIError(f"--images: {item} is neither a file nor a folder")
    if not files:
        raise CLIError(f"--images: no image files found in {inputs}")
    return files


def _mage_model_folder(model: str) -> tuple[str, str | None]:
    """(path or repo id, subfolder) of the `MageModel` weights in `--model`: a pipeline folder (its `transformer/`),
    or a folder holding a MAGE model itself (a pipeline's `transformer/`, a `MageModel`,
    `MageForMaskedImageModeling` or `MageForImageClassification` folder)."""
    if os.path.isdir(model):
        if os.path.isfile(os.path.join(model, "config.json")):
            return model, None
        if os.path.isfile(os.path.join(model, "transformer", "config.json")):
            return model, "transformer"
        raise CLIError(f"--model {model}: neither a MAGE model folder (config.json) nor a pipeline folder "
                       "(transformer/config.json)")
    from huggingface_hub import file_exists

    try:
        return (model, "transformer") if file_exists(model, "transformer/config.json") else (model, None)
    except Exception:  # offline, or no such repository: let from_pretrained look in the cache and say why
        return model, "transformer" if _cached_has_transformer(model) else None


def _cached_has_transformer(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "transformer/config.json"), str)


def _check_weights_files(folder: str) -> None:
    """A one-line error naming a truncated or corrupt safetensors file of a local model folder."""
    if os.path.isdir(folder):
        from .weights_check import check_safetensors_folder

        check_safetensors_folder(folder, recursive=False)


def _load_mage_model(model: str, subfolder: str | None, allow_mismatched_weights: bool):
    """`MageModel.from_pretrained`, refusing weights that do not match the config (missing, unexpected or
    mis-shaped tensors of the encoder; the heads of other MAGE classes are not the encoder's) unless allowed."""
    from .modeling_mage import MageModel

    kwargs = {"subfolder": subfolder} if subfolder else {}
    where = os.path.join(model, subfolder) if subfolder else model
    try:
        _check_weights_files(where)
        loaded, info = MageModel.from_pretrained(model, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as error:
        raise CLIError(f"--model {where}: cannot load a MAGE model ({_one_line(error)})") from error
    if not allow_mismatched_weights:
        problems = {kind: sorted(map(str, info.get(f"{kind}_keys") or [])) for kind in ("missing", "unexpected", "mismatched")}
        if any(problems.values()):
            found = "; ".join(f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in problems.items() if keys)
            raise CLIError(f"--model {where}: the weights do not match config.json ({found}); fix the config (e.g. "
                           "num_hidden_layers) or pass --allow-mismatched-weights")
    return loaded.eval()


def _embedding_processor(model: str, subfolder: str | None, config):
    """The saved `MageImageProcessor` of the model folder if there is one, else one matching `config.image_size`."""
    from .image_processing_mage import MageImageProcessor

    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        return MageImageProcessor.from_pretrained(model, **kwargs)
    except (OSError, ValueError):
        return MageImageProcessor.from_mage_config(config)


def _open_batch(files: list[Path], skip_unreadable: bool, skipped: list[Path]) -> tuple[list, list[Path]]:
    """The readable images of `files` (PIL, any mode) and their paths; unreadable ones go to `skipped` or raise."""
    from .image_io import open_image

    images, kept = [], []
    for path in files:
        try:
            images.append(open_image(path))
        except ValueError as error:
            if not skip_unreadable:
                raise CLIError(f"--images: {_one_line(error)}; pass --skip-unreadable to skip such files") from error
            logger.warning("skipping %s", _one_line(error))
            skipped.append(path)
            continue
        kept.append(path)
    return images, kept


def _files_list_path(out: Path) -> Path:
    """The text file beside `FEATURES.npy` naming the embedded image of each row (one path per line)."""
    return out.with_name(out.name[: -len(out.suffix)] + ".files.txt")


def run_embed(args) -> str:
    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        raise CLIError(f"--out must end with .npy or .safetensors, got {out}")
    outputs = [out, _files_list_path(out)] if out.suffix == ".npy" else [out]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not args.overwrite:
        raise CLIError(f"refusing to overwrite {', '.join(existing)}; pass --overwrite")
    files = _image_files(args.images)
    device = _device(args.device)
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    _quiet_library_loading(args, "transformers")
    model_path, subfolder = _mage_model_folder(_resolve_model(args.model))
    model = _load_mage_model(model_path, subfolder, args.allow_mismatched_weights)
    # The tokenizer stays float32 (token ids must not depend on the dtype); the transformer runs in --dtype.
    for name, module in model.named_children():
        if name != "vqvae":
            module.to(_dtype(args.dtype))
    model.to(device)
    processor = _embedding_processor(model_path, subfolder, model.config)
    features, embedded, skipped = [], [], []
    for start, count in tqdm(list(_batches(len(files), args.batch_size)), unit="batch", disable=None, leave=False):
        images, kept = _open_batch(files[start : start + count], args.skip_unreadable, skipped)
        if not images:
            continue
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            pooled = model(pixel_values=pixels.to(device, torch.float32)).pooler_output
        features.append(pooled.float().cpu())
        embedded += kept
    if not features:
        raise CLIError(f"--images: none of the {len(files)} file(s) could be read")
    features = torch.cat(features)
    names = [str(f) for f in embedded]
    if out.suffix == ".npy":
        _save_atomic(lambda p: np.save(p, features.numpy()), out)
        _save_atomic(lambda p: p.write_text("".join(f"{name}\n" for name in names)), _files_list_path(out))
    else:
        from safetensors.torch import save_file

        metadata = {"files": json.dumps(names), "skipped": json.dumps([str(f) for f in skipped])}
        _save_atomic(lambda p: save_file({"features": features.contiguous()}, str(p), metadata=metadata), out)
    message = f"wrote {tuple(features.shape)} features of {len(embedded)} image(s) to {out}"
    if skipped:
        shown = ", ".join(str(f) for f in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        message += f"; skipped {len(skipped)} unreadable file(s): {shown}"
    return message


def run_convert(args) -> str:
    from . import _register_auto_classes
    from .convert_original import convert_from_args

    _register_auto_classes()  # the written folders carry `auto_map` and the code files
    output = convert_from_args(args, command=args.command_line)
    return f"converted {args.checkpoint} to {output}"


# ---------------------------------------------------------------------------------------------- parser
def _add_model_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    parser.add_argument("--model", default=None, help="pipeline folder or Hub repo id (default: the embedded model)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="transformer dtype (the VQ weights stay float32; bfloat16 also decodes under autocast)")
    parser.add_argument("--allow-mismatched-weights", action="store_true",
                        help="load a model folder whose weights do not match its config (missing tensors stay "
                             "random); refused by default")


def _add_sampling_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument("--steps", type=positive_int, default=12, help="decoding steps (12 in the original script)")
    parser.add_argument("--class-label", nargs="+", default=None, metavar="L",
                        help="class ids or names for class-conditional models (cycled over the images)")
    parser.add_argument("--guidance-scale", type=non_negative_float, default=None,
                        help="classifier-free guidance weight (>= 0; default: the model's saved "
                             "default_guidance_scale, else 1)")
    parser.add_argument("--choice-temperature", type=non_negative_float, default=None,
                        help="Gumbel noise on the confidence (>= 0; default: the scheduler's config)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="image i uses seed + i")
    parser.add_argument("--num-images", type=positive_int, default=1,
                        help=f"images to generate (a grid PNG holds at most {MAX_GRID_IMAGES}; a folder any number)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per forward pass")


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in `argv` (the first word that is not a top-level option or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = "convert") -> argparse.ArgumentParser:
    """The `mage-hf` parser. `convert`'s own options come from `mage_hf.convert_original` (which imports torch),
    so they are added only when `command` is "convert"."""
    parser = _Parser(prog="mage-hf", description="MAGE generation, editing, embeddings and conversion.")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="DEBUG also logs the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    out_images = "FILE.png for one grid image, or a folder for one PNG per image"

    generate = commands.add_parser("generate", help="generate images")
    _add_model_options(generate, out_images)
    _add_sampling_options(generate, batch_size=16)
    generate.set_defaults(func=run_generate)

    inpaint = commands.add_parser(
        "inpaint", help="regenerate the masked part of an image, outpaint, or make variations",
        description="Regenerate the masked part of --image. Mask: grey values >= 128 of 255 (0.5) are regenerated, "
                    "darker ones kept; colour masks are read as grey (luma), transparent pixels count as black (kept). "
                    "Every token whose patch touches a regenerated pixel is re-sampled; all other tokens are kept.")
    _add_model_options(inpaint, out_images)
    _add_sampling_options(inpaint, batch_size=16)
    inpaint.add_argument("--image", required=True, help="the image (the model's size, or pass --resize)")
    region = inpaint.add_mutually_exclusive_group()
    region.add_argument("--mask", default=None,
                        help="mask image: grey >= 128 (of 255) = regenerate, darker = keep; transparent = keep; "
                             "resized to the image when its size differs; omit for variations")
    region.add_argument("--outpaint", type=non_negative_int, nargs=4, default=None,
                        metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
                        help="outpainting: extend the canvas by these pixel margins (rounded up to whole token "
                             "patches) and generate them window by window; the output is larger than the image")
    region.add_argument("--outpaint-box", type=int, nargs=4, default=None, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
                        help="zooming out: shrink the image into this box of a canvas of the model's size and "
                             "generate the rest (the output has the model's size)")
    inpaint.add_argument("--window-stride", type=positive_int, default=None, metavar="TOKENS",
                         help="--outpaint: tokens between generation windows (default: half a window)")
    inpaint.add_argument("--strength", type=unit_fraction, default=1.0,
                         help="fraction of the masked tokens re-sampled, in [0, 1] (with --mask, or alone for "
                              "variations)")
    inpaint.add_argument("--blend", action="store_true", help="paste the original pixels back outside the mask")
    inpaint.add_argument("--resize", action="store_true",
                         help="resize the image (bicubic) to the model's size first (not with --outpaint-box, which "
                              "resizes it into the box)")
    inpaint.set_defaults(func=run_inpaint)

    embed = commands.add_parser(
        "embed", help="MageModel pooled features (the linear-probe feature) of images",
        description="MageModel pooled features (the linear-probe feature) of images, one row per image in file "
                    "order. --model may be a pipeline folder, its transformer/ folder, or a MageModel, "
                    "MageForMaskedImageModeling or MageForImageClassification folder.")
    _add_model_options(embed, "FEATURES.npy (with FEATURES.files.txt naming each row's image) or "
                              "FEATURES.safetensors (the names in its metadata)")
    embed.add_argument("--images", nargs="+", required=True, help="image files and/or folders (sorted)")
    embed.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    embed.add_argument("--skip-unreadable", action="store_true",
                       help="skip image files that cannot be read (reported at the end, left out of the rows)")
    embed.set_defaults(func=run_embed)

    convert = commands.add_parser("convert", help="convert an original MAGE checkpoint into a mage-hf folder")
    if command == "convert":  # its options come from `convert_original`, which imports torch
        from .convert_original import add_convert_arguments

        add_convert_arguments(convert)
    convert.set_defaults(func=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["mage-hf", *argv])
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mage_hf").setLevel(args.log_level)
    try:
        message = args.func(args)
    except KeyboardInterrupt:
        parser.exit(130, f"mage-hf {args.command}: interrupted\n")
    except Exception as error:  # every failure is one line; the traceback only with --log-level DEBUG
        logger.debug("failure", exc_info=True)
        text = _one_line(error)
        if not isinstance(error, (CLIError, ValueError, TypeError, OSError)):
            text = f"{type(error).__name__}: {text} (--log-level DEBUG shows the traceback)"
        parser.exit(2, f"mage-hf {args.command}: error: {text}\n")
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
