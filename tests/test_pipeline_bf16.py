"""bf16 end to end and the sampling loop's per-step work (issue 14, items 1 and 2), on the shipped default model."""

from __future__ import annotations

import pytest
import torch

import mage_hf
from mage_hf import MageModel, MagePipeline
from mage_hf.scheduling_mage import sample_from_probs

BATCH = 64


@pytest.fixture(scope="module")
def pipes():
    fp32 = MagePipeline.from_pretrained(mage_hf.DEFAULT_MODEL_PATH)
    bf16 = MagePipeline.from_pretrained(mage_hf.DEFAULT_MODEL_PATH, torch_dtype=torch.bfloat16)
    for pipe in (fp32, bf16):
        pipe.set_progress_bar_config(disable=True)
    return fp32, bf16


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = (image.float() - reference.float()).pow(2).mean()
    return float(-10 * torch.log10(mse)) if mse > 0 else float("inf")


def test_bf16_load_is_the_fast_path_everywhere(pipes):
    fp32, bf16 = pipes
    assert bf16.transformer.dtype == torch.bfloat16
    assert bf16.vqvae.dtype == torch.float32  # VQ weights stay float32: encoding (inpainting) stays exact
    assert bf16.vqvae.fast_decode_dtype == torch.bfloat16  # the decode runs under bf16 autocast
    assert fp32.vqvae.fast_decode_dtype is None  # float32 loads keep the exact decode
    exact = MagePipeline.from_pretrained(mage_hf.DEFAULT_MODEL_PATH, torch_dtype=torch.bfloat16, fast_vq_decode=False)
    assert exact.vqvae.fast_decode_dtype is None


@pytest.mark.parametrize("class_labels", [None, list(range(10)) * 6 + [0, 1, 2, 3]])
def test_bf16_first_step_tokens_agree_with_float32(pipes, class_labels):
    """The first step's sampled tokens (every position, same random draws) from bf16 and float32 logits."""
    fp32, bf16 = pipes
    config = fp32.transformer.config
    ids = torch.full((BATCH, config.num_tokens), config.mask_token_id)
    class_ids = None if class_labels is None else torch.tensor(class_labels)
    with torch.no_grad():
        samples = []
        for pipe in (fp32, bf16):
            logits = pipe._logits(ids, pipe._class_columns(class_ids, BATCH, "cpu"), 1.0)
            assert logits.dtype == torch.float32
            samples.append(sample_from_probs(torch.softmax(logits, dim=-1), torch.Generator().manual_seed(0)))
    assert (samples[0] == samples[1]).float().mean() >= 0.99


def test_bf16_decode_psnr_against_float32_decode_of_the_same_tokens(pipes):
    fp32, bf16 = pipes
    token_ids = bf16(batch_size=16, num_inference_steps=6, generator=torch.manual_seed(0), class_labels=[7],
                     guidance_scale=2.0, output_type="latent").images
    fast = bf16.decode_latents(token_ids, "pt")
    exact = fp32.decode_latents(token_ids, "pt")
    assert fast.dtype == torch.float32 and 40.0 <= psnr(fast, exact) < float("inf")
    bf16.disable_fast_vq_decode()
    try:
        assert torch.equal(bf16.decode_latents(token_ids, "pt"), exact)  # the documented exact decode
    finally:
        bf16.enable_fast_vq_decode()


def test_bf16_encoding_stays_exact(pipes):
    fp32, bf16 = pipes
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(bf16.vqvae.tokenize(pixels), fp32.vqvae.tokenize(pixels))


# ----------------------------------------------------------------------------- item 2: no per-step validation
def test_sampling_loop_skips_input_validation_and_rebuilding(pipes, monkeypatch):
    fp32, _ = pipes
    reference = fp32(batch_size=4, num_inference_steps=5, generator=torch.manual_seed(1), class_labels=[2, 3, 4, 5],
                     guidance_scale=3.0, output_type="latent").images
    calls = {"check": 0, "build": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(MageModel, "_check_input_ids", counting("check", MageModel._check_input_ids))
    monkeypatch.setattr(MageModel, "build_input_ids", counting("build", MageModel.build_input_ids))
    again = fp32(batch_size=4, num_inference_steps=5, generator=torch.manual_seed(1), class_labels=[2, 3, 4, 5],
                 guidance_scale=3.0, output_type="latent").images
    assert calls == {"check": 0, "build": 0}
    assert torch.equal(again, reference)


def test_unchecked_logits_equal_the_checked_forward(pipes):
    fp32, _ = pipes
    config = fp32.transformer.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.codebook_size, (8, config.num_tokens), generator=generator)
    ids = torch.where(torch.rand(ids.shape, generator=generator) < 0.6, config.mask_token_id, ids)
    input_ids = fp32.transformer.mage.build_input_ids(ids, torch.arange(8) % 10)
    with torch.no_grad():
        checked = fp32.transformer(input_ids=input_ids).logits[:, 1:, : config.codebook_size]
        assert torch.equal(fp32._model_logits(input_ids), checked)


def test_scheduler_step_computes_one_softmax(monkeypatch):
    from mage_hf import MageScheduler

    logits = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(0))
    sample = torch.full((2, 16), 32)
    scheduler = MageScheduler(mask_token_id=32)
    scheduler.set_timesteps(4)
    reference = scheduler.step(logits, 0, sample, generator=torch.Generator().manual_seed(1)).prev_sample
    calls = []
    original = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = scheduler.step(logits, 0, sample, generator=torch.Generator().manual_seed(1)).prev_sample
    assert len(calls) == 1 and torch.equal(again, reference)
