"""`MageVQModel`: save/load, tokenization order and shape, decoding, no one-hot matrices, input errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mage_hf import MageVQModel


@pytest.fixture
def vqvae(tiny_config) -> MageVQModel:
    torch.manual_seed(0)
    return MageVQModel(**tiny_config.vqvae_config).eval()


def test_save_load_round_trip(vqvae, tiny_images, tmp_path):
    vqvae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = MageVQModel.from_pretrained(tmp_path).eval()
    assert loaded.config.codebook_size == vqvae.config.codebook_size
    assert torch.equal(loaded.tokenize(tiny_images), vqvae.tokenize(tiny_images))
    with torch.no_grad():
        assert torch.equal(loaded(tiny_images).sample, vqvae(tiny_images).sample)


def test_tokenize_is_row_major_nearest_code(vqvae, tiny_images):
    token_ids = vqvae.tokenize(tiny_images)
    factor = vqvae.downsample_factor
    grid_h, grid_w = tiny_images.shape[2] // factor, tiny_images.shape[3] // factor
    assert token_ids.shape == (2, grid_h * grid_w) and token_ids.dtype == torch.long
    with torch.no_grad():
        latents = vqvae.encode(tiny_images).latents  # (B, D, h, w)
    codebook = vqvae.quantize.embedding.weight
    # position (row, col) of the grid is token row * w + col
    for row, col in ((0, 0), (0, grid_w - 1), (grid_h - 1, 0), (2, 5)):
        distances = ((latents[:, :, row, col].unsqueeze(1) - codebook) ** 2).sum(-1)
        assert torch.equal(token_ids[:, row * grid_w + col], distances.argmin(dim=1))


def test_non_square_images(vqvae):
    images = torch.rand(1, 3, 8, 16)
    token_ids = vqvae.tokenize(images)
    assert token_ids.shape == (1, 4 * 8)
    decoded = vqvae.decode_tokens(token_ids, grid_size=(4, 8))
    assert decoded.shape == (1, 3, 8, 16)


def test_decode_tokens_equals_decode_of_quantized(vqvae, tiny_images):
    with torch.no_grad():
        quantized, token_ids = vqvae.quantize_latents(vqvae.encode(tiny_images).latents)
        from_tokens = vqvae.decode_tokens(token_ids)
        from_latents = vqvae.decode(quantized).sample
    assert from_tokens.shape == tiny_images.shape
    torch.testing.assert_close(from_tokens, from_latents)


def test_no_one_hot_matrix(vqvae, tiny_images, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("one-hot matrix built")

    monkeypatch.setattr(F, "one_hot", forbidden)
    monkeypatch.setattr(torch.nn.functional, "one_hot", forbidden)
    token_ids = vqvae.tokenize(tiny_images)
    with torch.no_grad():
        vqvae.decode_tokens(token_ids)
        vqvae(tiny_images)


def test_pixel_errors_name_the_argument(vqvae, tiny_images):
    with pytest.raises(ValueError, match="pixel_values.*shape"):
        vqvae.tokenize(tiny_images[:, :2])
    with pytest.raises(ValueError, match="pixel_values.*multiples"):
        vqvae.tokenize(torch.rand(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"pixel_values.*\[0, 1\]"):
        vqvae.tokenize(tiny_images * 255)
    with pytest.raises(TypeError, match="pixel_values"):
        vqvae.tokenize(tiny_images.numpy())


def test_token_errors_name_the_argument(vqvae):
    with pytest.raises(TypeError, match="token_ids"):
        vqvae.decode_tokens(torch.zeros(1, 64))
    with pytest.raises(ValueError, match="token_ids.*codebook"):
        vqvae.decode_tokens(torch.full((1, 64), vqvae.config.codebook_size))
    with pytest.raises(ValueError, match="token_ids.*grid_size"):
        vqvae.decode_tokens(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="token_ids.*shape"):
        vqvae.decode_tokens(torch.zeros(64, dtype=torch.long))


def test_config_errors():
    with pytest.raises(ValueError, match="base_channels"):
        MageVQModel(base_channels=20)
    with pytest.raises(ValueError, match="sample_size"):
        MageVQModel(base_channels=32, latent_channels=32, channel_multipliers=(1, 2), num_res_blocks=1, sample_size=15)
