"""The fast paths (SDPA, bf16, channels-last/bf16 VQ decoding, chunked code search, compile) against the exact
float32 path: they must agree with it to the stated tolerance, and results must not depend on the batch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline, MageScheduler, MageVQModel
from mage_hf.modeling_mage import cpu_low_precision_attention

from conftest import tiny_config_kwargs


def masked_ids(config, batch: int, fraction: float, seed: int = 0) -> torch.LongTensor:
    """(batch, 1 + N) ids: the fake class, then codebook ids with `fraction` of them masked."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.codebook_size, (batch, config.num_tokens), generator=generator)
    ids = torch.where(torch.rand(batch, config.num_tokens, generator=generator) < fraction, config.mask_token_id, ids)
    return torch.cat([torch.full((batch, 1), config.fake_class_label), ids], dim=1)


def codebook_logits(model, ids, autocast: bool = False) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(input_ids=ids).logits[:, 1:, : model.config.codebook_size].float()


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    mse = (image.float().clamp(0, 1) - reference.float().clamp(0, 1)).pow(2).mean()
    return float(-10 * torch.log10(mse)) if mse > 0 else float("inf")


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return MageForMaskedImageModeling(MageConfig(**tiny_config_kwargs())).eval()


@pytest.fixture(scope="module")
def fixture_transformer(converted_original):
    return MageForMaskedImageModeling.from_pretrained(converted_original["pretraining"] / "transformer").eval()


@pytest.fixture(scope="module")
def fixture_vqvae(converted_original):
    return MageVQModel.from_pretrained(converted_original["pretraining"] / "vqvae").eval()


# ----------------------------------------------------------------------------- attention
def test_sdpa_matches_eager(tiny_model):
    ids = masked_ids(tiny_model.config, 3, 0.5)
    sdpa = codebook_logits(tiny_model, ids)
    tiny_model.config._attn_implementation = "eager"
    eager = codebook_logits(tiny_model, ids)
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_low_precision_attention_matches_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 17, 16, generator=generator) for _ in range(3))
    reference = F.scaled_dot_product_attention(query, key, value, scale=0.25)
    fast = cpu_low_precision_attention(query.to(dtype), key.to(dtype), value.to(dtype), 0.25)
    assert fast.dtype == dtype
    torch.testing.assert_close(fast.float(), reference, rtol=0, atol=3e-2)


def test_float32_logits_are_float32_and_low_precision_logits_too(tiny_model):
    ids = masked_ids(tiny_model.config, 2, 0.5)
    with torch.no_grad():
        assert tiny_model(input_ids=ids).logits.dtype == torch.float32
        assert copy.deepcopy(tiny_model).to(torch.bfloat16)(input_ids=ids).logits.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert tiny_model(input_ids=ids).logits.dtype == torch.float32


# ----------------------------------------------------------------------------- bf16 vs fp32 on a converted checkpoint
@pytest.mark.parametrize("fraction", [1.0, 0.5])  # 1.0 = the first generation step
def test_bf16_token_predictions_agree_with_float32(fixture_transformer, fraction):
    ids = masked_ids(fixture_transformer.config, 64, fraction, seed=1)
    reference = codebook_logits(fixture_transformer, ids).argmax(-1)
    autocast = codebook_logits(fixture_transformer, ids, autocast=True).argmax(-1)
    weights = codebook_logits(copy.deepcopy(fixture_transformer).to(torch.bfloat16), ids).argmax(-1)
    assert (autocast == reference).float().mean() >= 0.99
    assert (weights == reference).float().mean() >= 0.99


def test_bf16_embeddings_match_float32(fixture_transformer, reference_tensors):
    pixels = reference_tensors["images"]
    with torch.no_grad():
        reference = fixture_transformer.mage(pixel_values=pixels).pooler_output
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = fixture_transformer.mage(pixel_values=pixels).pooler_output.float()
        weights = copy.deepcopy(fixture_transformer.mage).to(torch.bfloat16)(pixel_values=pixels).pooler_output.float()
    assert F.cosine_similarity(autocast, reference, dim=-1).min() > 0.995
    assert F.cosine_similarity(weights, reference, dim=-1).min() > 0.99


# ----------------------------------------------------------------------------- batch-size independence
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_do_not_depend_on_the_batch(tiny_model, dtype):
    model = tiny_model.to(dtype)
    ids = masked_ids(model.config, 5, 0.5)
    batched = codebook_logits(model, ids)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for row in (0, 3):
        torch.testing.assert_close(codebook_logits(model, ids[row : row + 1])[0], batched[row], rtol=0, atol=tolerance)


def test_embeddings_do_not_depend_on_the_batch(tiny_model):
    pixels = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        batched = tiny_model.mage(pixel_values=pixels)
        single = tiny_model.mage(pixel_values=pixels[2:3])
    torch.testing.assert_close(single.pooler_output[0], batched.pooler_output[2], rtol=0, atol=1e-5)
    torch.testing.assert_close(single.last_hidden_state[0], batched.last_hidden_state[2], rtol=0, atol=1e-5)


def test_chunked_code_search_is_exact():
    vq = MageVQModel(**tiny_config_kwargs()["vqvae_config"]).eval()
    latents = torch.randn(6, vq.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = vq.quantize.nearest_code(latents)
    vq.quantize.max_distance_elements = 5 * vq.config.codebook_size  # chunks of 5 pixels, the last one partial
    assert torch.equal(vq.quantize.nearest_code(latents), whole)


# ----------------------------------------------------------------------------- VQ decoding
def test_fast_vq_decode_psnr(fixture_vqvae, reference_tensors):
    codebook = fixture_vqvae.config.codebook_size
    random_grids = torch.randint(0, codebook, (4, 64), generator=torch.Generator().manual_seed(0))
    for token_ids in (random_grids, reference_tensors["vq_indices"]):
        with torch.no_grad():
            reference = fixture_vqvae.decode_tokens(token_ids)
            fixture_vqvae.enable_fast_decode(dtype=None, channels_last=True)
            channels_last = fixture_vqvae.decode_tokens(token_ids)
            fixture_vqvae.enable_fast_decode(dtype=torch.bfloat16, channels_last=True)
            fast = fixture_vqvae.decode_tokens(token_ids)
            fixture_vqvae.disable_fast_decode()
            again = fixture_vqvae.decode_tokens(token_ids)
        assert fast.dtype == torch.float32 and fast.shape == reference.shape and fast.is_contiguous()
        torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5)
        assert psnr(fast, reference) >= 40.0
        assert torch.equal(again, reference)


def test_fast_vq_decode_leaves_tokenization_alone(fixture_vqvae, reference_tensors):
    fixture_vqvae.enable_fast_decode()
    try:
        assert torch.equal(fixture_vqvae.tokenize(reference_tensors["images"]), reference_tensors["vq_indices"])
    finally:
        fixture_vqvae.disable_fast_decode()
    with pytest.raises(TypeError, match="dtype"):
        fixture_vqvae.enable_fast_decode(dtype=torch.int8)


# ----------------------------------------------------------------------------- pipeline
def tiny_pipeline() -> MagePipeline:
    torch.manual_seed(0)
    config = MageConfig(**tiny_config_kwargs())
    pipe = MagePipeline(
        vqvae=MageVQModel(**config.vqvae_config).eval(),
        transformer=MageForMaskedImageModeling(config).eval(),
        scheduler=MageScheduler(mask_token_id=config.mask_token_id),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_scheduler_step_same_for_int_and_tensor_timestep():
    scheduler = MageScheduler(mask_token_id=16)
    scheduler.set_timesteps(4)
    logits = torch.randn(2, 10, 16, generator=torch.Generator().manual_seed(0))
    sample = torch.full((2, 10), 16)
    by_int = scheduler.step(logits, 0, sample, generator=torch.Generator().manual_seed(1))
    by_tensor = scheduler.step(logits, scheduler.timesteps[0], sample, generator=torch.Generator().manual_seed(1))
    assert torch.equal(by_int.prev_sample, by_tensor.prev_sample)


def test_pipeline_fast_vq_decode_keeps_tokens():
    pipe = tiny_pipeline()
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    reference = pipe(batch_size=2, num_inference_steps=4, generator=generators(), output_type="pt").images
    pipe.enable_fast_vq_decode()
    fast = pipe(batch_size=2, num_inference_steps=4, generator=generators(), output_type="pt").images
    pipe.disable_fast_vq_decode()
    assert psnr(fast, reference) >= 40.0


@pytest.mark.slow  # compiling takes ~30 s on a small CPU
def test_compiled_pipeline_runs_and_matches():
    pipe = tiny_pipeline()
    generators = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    reference = pipe(batch_size=2, num_inference_steps=4, generator=generators(), output_type="latent").images
    pipe.enable_compile()
    assert isinstance(pipe.transformer, MageForMaskedImageModeling)
    compiled = pipe(batch_size=2, num_inference_steps=4, generator=generators(), output_type="latent").images
    assert (compiled == reference).float().mean() >= 0.99


def test_tokenizer_ignores_surrounding_autocast(fixture_transformer, reference_tensors):
    """bf16 training/inference under autocast must not change token ids: the VQ tokenizer opts out."""
    images = reference_tensors["images"]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        tokens = fixture_transformer.mage.tokenize(images)
    assert torch.equal(tokens, reference_tensors["vq_indices"])


def test_bf16_loading_keeps_the_tokenizer_in_float32(tmp_path, reference_tensors, fixture_transformer):
    fixture_transformer.save_pretrained(tmp_path)
    model = MageForMaskedImageModeling.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert model.mage.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert model.mage.vqvae.quantize.embedding.weight.dtype == torch.float32
    assert torch.equal(model.mage.tokenize(reference_tensors["images"]), reference_tensors["vq_indices"])
