"""Pre-training model setup: config checks against the tokenizer, class conditioning, the pre-tokenized
`image_token_ids` path of `MageForMaskedImageModeling`, MAGE-C's InfoNCE."""

import json

import pytest
import torch

from mage_hf import MageConfig, MageForMaskedImageModeling, MageVQModel
from mage_hf.training.contrastive import MageContrastiveHead, info_nce_loss
from mage_hf.training.model_setup import (
    build_pretraining_config,
    check_vqvae_matches,
    copy_vqvae_weights,
    set_class_conditioning,
    vq_settings,
)

from conftest import tiny_config_kwargs


@pytest.fixture
def tiny_vqvae():
    torch.manual_seed(0)
    return MageVQModel(**tiny_config_kwargs()["vqvae_config"])


def test_fresh_config_takes_the_tokenizer_settings(tiny_vqvae, tmp_path):
    kwargs = {k: v for k, v in tiny_config_kwargs().items() if k != "vqvae_config"}
    config = build_pretraining_config(json.dumps(kwargs), None, tiny_vqvae, 16)
    assert config.codebook_size == 16 and config.num_tokens == 64 and config.image_size == 16
    assert config.vqvae_config == vq_settings(tiny_vqvae)
    with pytest.raises(ValueError, match="codebook_size: model 32 vs tokenizer 16"):
        check_vqvae_matches({**vq_settings(tiny_vqvae), "codebook_size": 32}, tiny_vqvae)
    with pytest.raises(ValueError, match="exactly one"):
        build_pretraining_config(None, None, tiny_vqvae, 16)


def test_class_conditioning_needs_room_for_a_distinct_fake_class(tiny_config):
    set_class_conditioning(tiny_config, [f"c{i}" for i in range(10)], 0.2)
    assert tiny_config.class_conditional and tiny_config.class_dropout_prob == 0.2
    assert tiny_config.id2label[3] == "c3" and tiny_config.label2id["c9"] == 9
    with pytest.raises(ValueError, match="num_class_tokens"):
        set_class_conditioning(MageConfig(**tiny_config_kwargs()), [f"c{i}" for i in range(11)], None)
    with pytest.raises(ValueError, match="labelled"):
        set_class_conditioning(tiny_config, None, None)


def test_image_token_ids_path_equals_pixel_path(tiny_config, tiny_images, tiny_vqvae):
    model = MageForMaskedImageModeling(tiny_config)
    copy_vqvae_weights(model, tiny_vqvae)
    tokens = tiny_vqvae.tokenize(tiny_images)
    model.eval()
    from_pixels = model(pixel_values=tiny_images, generator=torch.Generator().manual_seed(3))
    from_tokens = model(image_token_ids=tokens, generator=torch.Generator().manual_seed(3))
    assert torch.equal(from_pixels.labels, from_tokens.labels)
    assert torch.equal(from_pixels.token_mask, from_tokens.token_mask)
    assert torch.allclose(from_pixels.loss, from_tokens.loss)
    with pytest.raises(ValueError, match="image_token_ids"):
        model(image_token_ids=tokens[:, :10])
    with pytest.raises(ValueError, match="exactly one"):
        model(pixel_values=tiny_images, image_token_ids=tokens)


def test_info_nce_prefers_matching_views(tiny_config):
    torch.manual_seed(0)
    first = torch.randn(8, 16)
    matched = info_nce_loss(first, first + 0.01 * torch.randn(8, 16), temperature=0.2)
    shuffled = info_nce_loss(first, first[torch.randperm(8)], temperature=0.2)
    assert matched < shuffled
    assert MageContrastiveHead(tiny_config)(torch.randn(4, tiny_config.hidden_size)).shape == (4, 256)
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(first, first, temperature=0.0)
