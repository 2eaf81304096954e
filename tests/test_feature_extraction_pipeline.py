"""`transformers.pipeline("image-feature-extraction")` on a MAGE folder: which output is the linear-probe feature.

The README documents that `pool=True` returns `MageModel(...).pooler_output` (the original's linear-probe feature:
mean of the last block over the image tokens, through `fc_norm`), and the default returns `last_hidden_state`
(B, 1 + N, D) after the final norm, position 0 being the class/fake-class token.
"""

import numpy as np
import torch
import transformers
from PIL import Image

import mage_hf
from mage_hf import MageImageProcessor, MageModel

TRANSFORMER_DIR = f"{mage_hf.DEFAULT_MODEL_PATH}/transformer"


def _images(count: int = 2) -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")) for _ in range(count)]


def test_pool_true_is_the_pooler_output_and_default_is_the_last_hidden_state(single_thread):
    images = _images()
    extractor = transformers.pipeline("image-feature-extraction", model=TRANSFORMER_DIR)
    model = MageModel.from_pretrained(TRANSFORMER_DIR).eval()
    processor = MageImageProcessor.from_pretrained(TRANSFORMER_DIR)
    with torch.no_grad():
        outputs = model(**processor(images=images, return_tensors="pt"))

    pooled = np.array([np.asarray(row)[0] for row in extractor(images, pool=True)])
    np.testing.assert_allclose(pooled, outputs.pooler_output.numpy(), rtol=0, atol=1e-6)

    unpooled = np.array([np.asarray(row)[0] for row in extractor(images)])
    assert unpooled.shape == (2, 1 + model.config.num_tokens, model.config.hidden_size)
    np.testing.assert_allclose(unpooled, outputs.last_hidden_state.numpy(), rtol=0, atol=1e-6)
