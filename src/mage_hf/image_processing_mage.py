"""`MageImageProcessor`: images -> `pixel_values` in [0, 1] at the model's size (no mean/std normalisation).

MAGE's VQGAN tokenizer reads raw pixels in [0, 1], so the processor only converts to RGB, resizes the shortest
edge (bicubic), centre-crops to the model's `image_size` and divides by 255. This module depends on
transformers and `image_io` (numpy + PIL) alone, so that both are copied next to a saved model and load with
`trust_remote_code=True`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling, is_scaled_image
from transformers.processing_utils import ImagesKwargs
from transformers.utils import logging

from .image_io import DEFAULT_BACKGROUND, open_image, pil_to_rgb_uint8

logger = logging.get_logger(__name__)

DEFAULT_IMAGE_SIZE = 256


class MageImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    background_color (`tuple[int, int, int]`, *optional*, defaults to `self.background_color`):
        The (R, G, B) colour, 0-255, that transparent pixels of PIL images are composited on (white by default).
    """

    background_color: tuple[int, int, int] | list[int]


class MageImageProcessor(PilBackend):
    r"""Prepare images for MAGE models (`MageModel`, `MageForImageClassification`, `MageForMaskedImageModeling`).

    Steps (each can be switched off per call, as for any transformers image processor):

    1. convert to RGB (`do_convert_rgb`): PIL images of every mode are scaled by their own range (16-bit PNGs by
       65535, see `mage_hf.image_io`) and transparency is composited on `background_color` (white by default);
    2. resize so that the shortest edge is `size["shortest_edge"]`, bicubic (`do_resize`, `resample`);
    3. centre-crop to `crop_size` (`do_center_crop`), the model's `image_size`;
    4. rescale by `rescale_factor` = 1/255 to [0, 1] (`do_rescale`).

    No mean/std normalisation (`do_normalize=False`): the VQGAN expects [0, 1] pixels. The output is
    `pixel_values` of shape (batch, 3, crop_size, crop_size).

    Inputs: PIL images, uint8 arrays/tensors in [0, 255], float arrays/tensors (in [0, 255], or in [0, 1] with
    `do_rescale=False`; float input already in [0, 1] with `do_rescale=True` is rescaled again, with a warning, as
    in transformers), or paths to image files (read with `mage_hf.image_io.open_image`). NaN/inf pixels and an
    empty list raise a ValueError.

    The original evaluation transform resized to 292 px before a 256 px centre crop (ratio 256/292); pass
    `size={"shortest_edge": 292}` to reproduce it exactly. The default resizes straight to the crop size.

    Example:
        ```py
        >>> from mage_hf import MageImageProcessor
        >>> processor = MageImageProcessor.from_pretrained("path/to/model")
        >>> pixel_values = processor(images=pil_image, return_tensors="pt").pixel_values  # (1, 3, 256, 256)
        ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = MageImageProcessorKwargs
    background_color = DEFAULT_BACKGROUND
    resample = PILImageResampling.BICUBIC
    size = {"shortest_edge": DEFAULT_IMAGE_SIZE}
    crop_size = {"height": DEFAULT_IMAGE_SIZE, "width": DEFAULT_IMAGE_SIZE}
    default_to_square = False
    do_convert_rgb = True
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = False

    @classmethod
    def from_mage_config(cls, config, **kwargs) -> "MageImageProcessor":
        """A processor matching `config.image_size` (a `MageConfig`, or anything with an `image_size`)."""
        image_size = getattr(config, "image_size", None)
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"`config.image_size` must be a positive integer, got {image_size!r}")
        kwargs.setdefault("size", {"shortest_edge": image_size})
        kwargs.setdefault("crop_size", {"height": image_size, "width": image_size})
        if getattr(config, "image_mean", None) is not None:
            # The model was trained on normalised pixels (the original fine-tuned classifiers).
            kwargs.setdefault("do_normalize", True)
            kwargs.setdefault("image_mean", list(config.image_mean))
            kwargs.setdefault("image_std", list(config.image_std))
        return cls(**kwargs)

    def fetch_images(self, image_url_or_urls):
        """Local paths are read with `open_image` (the file named in any error, a decompression-bomb limit, the
        file closed afterwards); URLs and images go through the base class."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        if isinstance(image_url_or_urls, os.PathLike) or (
            isinstance(image_url_or_urls, str) and not image_url_or_urls.startswith(("http://", "https://"))
        ):
            return open_image(image_url_or_urls)
        return super().fetch_images(image_url_or_urls)

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        images = super()._prepare_images_structure(images, expected_ndims=expected_ndims)
        if len(images) == 0:
            raise ValueError("`images` must hold at least one image, got an empty list")
        return images

    def process_image(self, image, do_convert_rgb: bool | None = None, input_data_format=None, **kwargs) -> np.ndarray:
        """One image -> (C, H, W) array: PIL images through `pil_to_rgb_uint8` (every mode at its own range),
        arrays and tensors as in the base class, with NaN/inf refused and already-scaled floats warned about."""
        if isinstance(image, Image.Image) and do_convert_rgb:
            background = kwargs.get("background_color")
            rgb = pil_to_rgb_uint8(image, self.background_color if background is None else background)
            return np.ascontiguousarray(rgb.transpose(2, 0, 1))
        image = super().process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format,
                                      **kwargs)
        if np.issubdtype(image.dtype, np.floating):
            if not np.isfinite(image).all():
                raise ValueError("`images` must hold finite pixel values, got NaN or inf")
            if kwargs.get("do_rescale") and is_scaled_image(image):
                logger.warning_once(
                    "It looks like you are trying to rescale already rescaled images (float pixels in [0, 1]): they "
                    "are divided by 255 again. Pass `do_rescale=False` to use them as they are."
                )
        return image

    def to_dict(self) -> dict:
        output = super().to_dict()
        auto_map = output.get("auto_map")
        # Written per backend ({"pil": ...}, a form `AutoImageProcessor` reads): transformers 5 pipelines turn a
        # plain-string reference into a guessed `...VideoProcessor` one and would ask whether to run remote code
        # even where mage-hf is installed.
        if isinstance(auto_map, dict) and isinstance(auto_map.get("AutoImageProcessor"), str):
            output["auto_map"] = {**auto_map, "AutoImageProcessor": {"pil": auto_map["AutoImageProcessor"]}}
        return output


__all__ = ["MageImageProcessor"]
