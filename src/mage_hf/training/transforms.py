"""Image augmentations for MAGE training, on PIL and torch (no torchvision).

Every random choice is drawn from a generator keyed by `(seed, sample_index, draw)`, never from a global
RNG: draw `d` of a sample is always the same crop, whichever process or data-loader worker computes it, so a
run resumed from a checkpoint sees exactly the crops the uninterrupted run saw. The batch transforms use draw
`epoch * views_per_step + view`; pre-tokenized view `v` is draw `v`, the crop the on-the-fly path uses then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..image_io import pil_to_rgb_uint8

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
RESIZE_MODES = ("resize", "pad")


def to_rgb_image(image) -> Image.Image:
    """A PIL image or a uint8 array (H, W) / (H, W, 1|3|4) -> RGB PIL image (grey replicated to 3 channels)."""
    if isinstance(image, Image.Image):
        # `convert("RGB")` saturates 16-bit images and drops transparency onto black; `pil_to_rgb_uint8` scales
        # every mode to 8 bits and composites transparency on white (the processor's documented background).
        return image if image.mode == "RGB" else Image.fromarray(pil_to_rgb_uint8(image), mode="RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (values 0-255), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return to_rgb_image(Image.fromarray(array))
    raise ValueError(f"image arrays must have shape (H, W) or (H, W, 1|3|4), got {array.shape}")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1] (no mean/std: MAGE's tokenizer reads raw [0, 1] pixels)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def pad_to_size(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """Centre the image on a `size` x `size` canvas of colour `fill` (sides already >= size are kept)."""
    width, height = image.size
    if width >= size and height >= size:
        return image
    canvas = Image.new("RGB", (max(width, size), max(height, size)), (fill, fill, fill))
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def resize_center_crop(image: Image.Image, size: int, resample: int) -> Image.Image:
    """Resize the shorter side to `size`, then take the central `size` x `size` square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """torchvision's `RandomResizedCrop.get_params` rule: a box (left, top, right, bottom) covering a
    uniform fraction of the area in `scale` with a log-uniform aspect ratio in `ratio` (10 tries, then the
    largest centred box within `ratio`)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return left, top, left + crop_w, top + crop_h
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w, crop_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_w, crop_h = int(round(height * max(ratio))), height
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


@dataclass
class ImageTransformConfig:
    """How raw images become `pixel_values` (3, image_size, image_size) in [0, 1].

    Args:
        image_size: output side in pixels.
        resize_mode: `"resize"` (shorter side to `image_size`, centre crop; what `MageImageProcessor` does) or
            `"pad"` (centre small images on a `pad_fill` canvas first, e.g. Fashion-MNIST 28 -> 32 without
            interpolation).
        random_crop: RandomResizedCrop (training) instead of the deterministic resize.
        crop_scale / crop_ratio: area fraction and aspect-ratio range of the random crop (MAGE: 0.2-1, 3/4-4/3).
        horizontal_flip: flip with probability 1/2 (training).
        interpolation: PIL resampling filter name (the original pre-training crop is bilinear).
        pad_fill: grey level of the padding in `"pad"` mode.
        seed: keys the per-sample random generators.
    """

    image_size: int = 256
    resize_mode: str = "resize"
    random_crop: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = True
    interpolation: str = "bilinear"
    pad_fill: int = 0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"`image_size` must be a positive integer, got {self.image_size!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in RESAMPLING:
            raise ValueError(f"`interpolation` must be one of {sorted(RESAMPLING)}, got {self.interpolation!r}")
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"`crop_scale` must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"`crop_ratio` must satisfy 0 < min <= max, got {self.crop_ratio}")


class MageImageTransform:
    """One image -> `pixel_values` (3, S, S) in [0, 1], deterministic given (sample_index, draw)."""

    def __init__(self, config: ImageTransformConfig):
        self.config = config
        self.resample = RESAMPLING[config.interpolation]

    def rng(self, sample_index: int, draw: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, int(sample_index), int(draw)])

    def base_image(self, image) -> Image.Image:
        image = to_rgb_image(image)
        if self.config.resize_mode == "pad":
            image = pad_to_size(image, self.config.image_size, self.config.pad_fill)
        return image

    def __call__(self, image, sample_index: int = 0, draw: int = 0) -> torch.Tensor:
        cfg = self.config
        image = self.base_image(image)
        if not cfg.random_crop:
            return to_tensor(resize_center_crop(image, cfg.image_size, self.resample))
        rng = self.rng(sample_index, draw)
        box = random_resized_crop_box(image.width, image.height, cfg.crop_scale, cfg.crop_ratio, rng)
        image = image.resize((cfg.image_size, cfg.image_size), self.resample, box=box)
        if cfg.horizontal_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image)
