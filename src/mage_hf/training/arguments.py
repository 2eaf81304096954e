"""Argument dataclasses shared by the example scripts (parsed with `transformers.HfArgumentParser`),
and small helpers for output folders and checkpoints."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from .transforms import ImageTransformConfig

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class ImageDataArguments:
    """Where the images come from and how they are cropped."""

    train_data: str = field(
        metadata={"help": "An image folder (class sub-folders give labels), an .npz file with `x_train` (N, H, W) "
                          "or (N, H, W, 3) uint8 [and `y_train`, `class_names`], a `save_to_disk` folder, or a "
                          "`datasets` name."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on (`x_<split>` in an .npz)."})
    eval_split: str | None = field(default=None, metadata={"help": "Optional split of the same data to evaluate on."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: the first Image feature)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: the first ClassLabel)."})
    image_size: int | None = field(default=None, metadata={"help": "Training image side in pixels (default: the model's)."})
    resize_mode: str = field(
        default="resize",
        metadata={"help": "'resize' (shorter side to image_size + centre crop, as MageImageProcessor) or 'pad' "
                          "(centre smaller images on a black canvas first, e.g. 28 px Fashion-MNIST -> 32)."},
    )
    crop_min_scale: float = field(default=0.2, metadata={"help": "RandomResizedCrop minimum area fraction (MAGE: 0.2)."})
    crop_max_scale: float = field(default=1.0, metadata={"help": "RandomResizedCrop maximum area fraction."})
    random_crop: bool = field(default=True, metadata={"help": "Random resized crops for training (else plain resize)."})
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flips for training."})
    interpolation: str = field(default="bilinear", metadata={"help": "PIL resampling: nearest, bilinear, bicubic, lanczos."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})

    def transform_config(self, image_size: int, train: bool, seed: int) -> ImageTransformConfig:
        return ImageTransformConfig(
            image_size=image_size,
            resize_mode=self.resize_mode,
            random_crop=train and self.random_crop,
            crop_scale=(self.crop_min_scale, self.crop_max_scale),
            horizontal_flip=train and self.horizontal_flip,
            interpolation=self.interpolation,
            seed=seed,
        )


def pipeline_subfolder(path: str, component: str) -> str:
    """`component` (e.g. "transformer", "vqvae") when `path` is a pipeline folder (it has `model_index.json`),
    else "" (the folder holds that component itself)."""
    return component if os.path.isfile(os.path.join(path, "model_index.json")) else ""


def parse_json_or_path(value: str | None, argument: str) -> dict:
    """A JSON object given inline or as a path to a .json file (`{}` for None)."""
    if value is None:
        return {}
    text = value
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as handle:
            text = handle.read()
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{argument}` must be a JSON object or the path of a .json file, got {value!r}: {error}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"`{argument}` must be a JSON object (keys of the config), got {type(parsed).__name__}")
    return parsed


def last_checkpoint(output_dir: str) -> str | None:
    """The `checkpoint-<step>` folder with the highest step in `output_dir`, or None."""
    if not os.path.isdir(output_dir):
        return None
    steps = [int(m.group(1)) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))
             and os.path.isdir(os.path.join(output_dir, name))]
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """`None`/False -> None; `"latest"`/`"last"`/True -> the newest checkpoint in `output_dir` (error if none);
    a path -> that path (error if missing)."""
    if resume_from_checkpoint in (None, False, "", "False", "false"):
        return None
    if resume_from_checkpoint in (True, "True", "true", "latest", "last"):
        found = last_checkpoint(output_dir)
        if found is None:
            raise ValueError(
                f"`resume_from_checkpoint` {resume_from_checkpoint!r}: no checkpoint-* folder in {output_dir!r}"
            )
        return found
    if not os.path.isdir(resume_from_checkpoint):
        raise ValueError(f"`resume_from_checkpoint` {resume_from_checkpoint!r} is not a folder")
    return resume_from_checkpoint


def check_output_dir(output_dir: str, overwrite: bool, resuming: bool) -> None:
    """Refuse to write into a non-empty `output_dir` unless resuming or `overwrite_output_dir` is set."""
    if resuming or overwrite or not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return
    raise ValueError(
        f"`output_dir` {output_dir!r} exists and is not empty; pass `--resume_from_checkpoint latest` to continue "
        "the run in it, or `--overwrite_output_dir` to train from scratch into it"
    )
