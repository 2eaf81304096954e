"""`MageImageProcessor`: RGB, shortest-edge bicubic resize, centre crop, [0, 1] values; `transformers.pipeline`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, pipeline

from mage_hf import MageForImageClassification, MageImageProcessor, MageModel


def random_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (height, width) if channels is None else (height, width, channels)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def reference_preprocess(image: Image.Image, size: int) -> np.ndarray:
    """The same steps written with PIL directly: shortest edge -> `size` (bicubic), centre crop, / 255."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = (size, int(height * scale)) if width <= height else (int(width * scale), size)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def test_defaults_match_the_original_model_size():
    processor = MageImageProcessor()
    assert processor.size.shortest_edge == 256 and (processor.crop_size.height, processor.crop_size.width) == (256, 256)
    assert processor.do_normalize is False and processor.do_convert_rgb is True
    pixel_values = processor(random_image(300, 260), return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 256, 256) and pixel_values.dtype == torch.float32


@pytest.mark.parametrize("width,height", [(40, 24), (24, 40), (16, 16)])
def test_resize_crop_rescale_match_pil(tiny_config, width, height):
    processor = MageImageProcessor.from_mage_config(tiny_config)
    image = random_image(width, height, seed=width)
    pixel_values = processor(image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, tiny_config.image_size, tiny_config.image_size)
    expected = reference_preprocess(image, tiny_config.image_size)
    assert np.abs(pixel_values[0].numpy() - expected).max() < 1e-6
    assert 0.0 <= float(pixel_values.min()) and float(pixel_values.max()) <= 1.0


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_converts_to_rgb(tiny_config, mode):
    processor = MageImageProcessor.from_mage_config(tiny_config)
    pixel_values = processor(random_image(20, 20, mode=mode), return_tensors="pt").pixel_values
    assert pixel_values.shape[1] == 3


def test_batch_and_numpy_inputs(tiny_config):
    processor = MageImageProcessor.from_mage_config(tiny_config)
    images = [random_image(30, 20, seed=1), np.asarray(random_image(20, 30, seed=2))]
    pixel_values = processor(images, return_tensors="pt").pixel_values
    assert pixel_values.shape == (2, 3, 16, 16)


def test_save_load_and_auto_class(tiny_config, tmp_path):
    processor = MageImageProcessor.from_mage_config(tiny_config)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "MageImageProcessor" and saved["do_normalize"] is False
    assert saved["auto_map"]["AutoImageProcessor"] == {"pil": "image_processing_mage.MageImageProcessor"}
    assert (tmp_path / "image_processing_mage.py").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is MageImageProcessor
    assert loaded.size.shortest_edge == tiny_config.image_size and loaded.resample == processor.resample


def test_from_mage_config_rejects_bad_image_size():
    class NoSize:
        image_size = 0

    with pytest.raises(ValueError, match="image_size"):
        MageImageProcessor.from_mage_config(NoSize())


def _no_prompt(monkeypatch):
    """Loading must never ask whether to run remote code (mage-hf is installed)."""

    def refuse(*args, **kwargs):
        raise AssertionError("asked a question on stdin")

    monkeypatch.setattr("builtins.input", refuse)


def test_image_feature_extraction_pipeline(tiny_config, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = MageModel(tiny_config).eval()
    model.save_pretrained(tmp_path)
    processor = MageImageProcessor.from_mage_config(tiny_config)
    processor.save_pretrained(tmp_path)
    _no_prompt(monkeypatch)
    image = random_image(24, 18)
    with torch.no_grad():
        expected = model(**processor(image, return_tensors="pt"))
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    assert isinstance(extractor.model, MageModel) and isinstance(extractor.image_processor, MageImageProcessor)
    features = torch.tensor(extractor(image))
    assert features.shape == (1, 1 + tiny_config.num_tokens, tiny_config.hidden_size)
    torch.testing.assert_close(features, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    pooled = torch.tensor(extractor(image, pool=True))
    torch.testing.assert_close(pooled.view(1, -1), expected.pooler_output, rtol=1e-5, atol=1e-5)


def test_image_classification_pipeline(tiny_config, tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = tiny_config.__class__(**{**tiny_config.to_dict(), "id2label": {0: "cat", 1: "dog", 2: "bag"}})
    model = MageForImageClassification(config).eval()
    model.save_pretrained(tmp_path)
    MageImageProcessor.from_mage_config(config).save_pretrained(tmp_path)
    _no_prompt(monkeypatch)
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = random_image(20, 20)
    predictions = classifier(image, top_k=3)
    with torch.no_grad():
        logits = model(**MageImageProcessor.from_mage_config(config)(image, return_tensors="pt")).logits
    assert [p["label"] for p in predictions][0] == config.id2label[int(logits.argmax())]
    assert abs(sum(p["score"] for p in predictions) - 1.0) < 1e-5
