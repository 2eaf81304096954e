"""`MageImageProcessor`: images -> `pixel_values` in [0, 1] at the model's size (no mean/std normalisation).

MAGE's VQGAN tokenizer reads raw pixels in [0, 1], so the processor only converts to RGB, resizes the shortest
edge (bicubic), centre-crops to the model's `image_size` and divides by 255. This module depends on
transformers alone so that it can be copied next to a saved model and loaded with `trust_remote_code=True`.
"""

from __future__ import annotations

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling

DEFAULT_IMAGE_SIZE = 256


class MageImageProcessor(PilBackend):
    r"""Prepare images for MAGE models (`MageModel`, `MageForImageClassification`, `MageForMaskedImageModeling`).

    Steps (each can be switched off per call, as for any transformers image processor):

    1. convert to RGB (`do_convert_rgb`);
    2. resize so that the shortest edge is `size["shortest_edge"]`, bicubic (`do_resize`, `resample`);
    3. centre-crop to `crop_size` (`do_center_crop`), the model's `image_size`;
    4. rescale by `rescale_factor` = 1/255 to [0, 1] (`do_rescale`).

    No mean/std normalisation (`do_normalize=False`): the VQGAN expects [0, 1] pixels. The output is
    `pixel_values` of shape (batch, 3, crop_size, crop_size).

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
