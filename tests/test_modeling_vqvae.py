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
    with pytest.raises(ValueError, match="num_res_blocks"):
        MageVQModel(base_channels=32, latent_channels=32, channel_multipliers=(1, 2), num_res_blocks=0, sample_size=16)


def _reconstruction_step(model: MageVQModel, images: torch.Tensor) -> tuple[torch.Tensor, dict, int]:
    """Loss, gradients and the bytes autograd saved for the backward pass, for one reconstruction step."""
    model.zero_grad()
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = F.mse_loss(model(images).sample, images)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved[0]


def test_gradient_checkpointing_same_gradients_fewer_saved_activations():
    torch.manual_seed(0)
    model = MageVQModel(base_channels=32, channel_multipliers=(1, 2, 2), num_res_blocks=2, latent_channels=32,
                        codebook_size=16, sample_size=32).train()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loss, grads, saved = _reconstruction_step(model, images)
    assert model._supports_gradient_checkpointing
    calls = []

    def counting_checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(counting_checkpoint)
    assert model.is_gradient_checkpointing
    loss_ckpt, grads_ckpt, saved_ckpt = _reconstruction_step(model, images)
    # Every resolution level and the middle block of the encoder and the decoder: 3 + 1 + 1 + 3.
    assert sorted(calls) == sorted(["VQEncoderStage"] * 3 + ["VQMidBlock"] * 2 + ["VQDecoderStage"] * 3)
    assert torch.equal(loss, loss_ckpt) and grads.keys() == grads_ckpt.keys()
    for name in grads:
        assert torch.equal(grads[name], grads_ckpt[name]), name
    assert saved_ckpt < saved / 4  # measured: 18.3 MB -> 2.2 MB
    with torch.no_grad():  # inference never recomputes
        calls.clear()
        model(images)
    assert not calls
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing
