"""Augmentations of `mage_hf.training.transforms`: torchvision's crop rule, determinism per key, grey -> RGB."""

import numpy as np
import pytest
import torch
from PIL import Image

from mage_hf.training.transforms import (
    ImageTransformConfig,
    MageImageTransform,
    random_resized_crop_box,
    to_rgb_image,
)


def test_crop_box_within_image_and_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(28, 28, (0.2, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= left < right <= 28 and 0 <= top < bottom <= 28
        area = (right - left) * (bottom - top) / 28**2
        assert 0.15 <= area <= 1.0


def test_transform_is_a_function_of_the_key():
    transform = MageImageTransform(ImageTransformConfig(image_size=32, seed=3))
    image = (np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)
    first = transform(image, sample_index=5, draw=2)
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, transform(image, sample_index=5, draw=2))
    assert not torch.equal(first, transform(image, sample_index=5, draw=3))
    assert not torch.equal(first, transform(image, sample_index=6, draw=2))
    # Grey images become 3 identical channels.
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])


def test_eval_transform_resize_and_pad():
    image = np.full((28, 28), 255, dtype=np.uint8)
    resized = MageImageTransform(ImageTransformConfig(image_size=32, random_crop=False, horizontal_flip=False))(image)
    assert resized.shape == (3, 32, 32) and torch.allclose(resized, torch.ones_like(resized))
    padded = MageImageTransform(ImageTransformConfig(image_size=32, random_crop=False, resize_mode="pad"))(image)
    assert padded[:, 2:30, 2:30].eq(1).all() and padded[:, :2].eq(0).all() and padded[:, :, 30:].eq(0).all()


def test_rgb_conversion_and_bad_inputs():
    assert to_rgb_image(np.zeros((4, 5, 3), np.uint8)).size == (5, 4)
    assert to_rgb_image(Image.new("L", (3, 3))).mode == "RGB"
    with pytest.raises(TypeError, match="uint8"):
        to_rgb_image(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransformConfig(resize_mode="stretch")
    with pytest.raises(ValueError, match="crop_scale"):
        ImageTransformConfig(crop_scale=(0.0, 1.0))


def test_rgb_conversion_scales_sixteen_bit_and_composites_transparency():
    # A 16-bit grey image at half range must become grey 128, not saturate to 255 as `convert("RGB")` does.
    grey16 = Image.fromarray(np.full((2, 2), 32768, np.uint16))
    assert grey16.mode == "I;16"
    assert np.asarray(to_rgb_image(grey16)).tolist() == [[[128] * 3] * 2] * 2
    # Fully transparent pixels are composited on white (the processor's documented background), arrays too.
    transparent = np.zeros((2, 2, 4), np.uint8)
    assert (np.asarray(to_rgb_image(transparent)) == 255).all()
    assert (np.asarray(to_rgb_image(Image.fromarray(transparent))) == 255).all()
