"""MAGE transformer models: round trips, shapes, Auto classes, attention paths, masking statistics, loss, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForMaskedImageModeling
from transformers.modeling_layers import GradientCheckpointingLayer

from mage_hf import MageConfig, MageForImageClassification, MageForMaskedImageModeling, MageModel
from mage_hf.masking import sample_mask_ratio

from conftest import tiny_config_kwargs


def no_dropout_config(**overrides) -> MageConfig:
    return MageConfig(**tiny_config_kwargs(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                           embedding_dropout_prob=0.0, **overrides))


def masked_inputs(config: MageConfig, batch: int = 2, seed: int = 0):
    """input_ids (B, 1+N) with 6 masked positions per row, 4 of them dropped; labels (B, N)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, config.codebook_size, (batch, config.num_tokens), generator=generator)
    order = torch.rand(batch, config.num_tokens, generator=generator).argsort(dim=1)
    masked = torch.zeros(batch, config.num_tokens, dtype=torch.bool).scatter(1, order[:, :6], True)
    dropped = torch.zeros_like(masked).scatter(1, order[:, :4], True)
    ids = torch.where(masked, config.mask_token_id, labels)
    input_ids = torch.cat([torch.full((batch, 1), config.fake_class_label), ids], dim=1)
    drop_mask = torch.cat([torch.zeros(batch, 1, dtype=torch.bool), dropped], dim=1)
    return input_ids, drop_mask, labels


# --------------------------------------------------------------------------- shapes, round trips, Auto classes


def test_output_shapes(tiny_config, tiny_images):
    cfg = tiny_config
    base = MageModel(cfg).eval()
    out = base(pixel_values=tiny_images)
    assert out.last_hidden_state.shape == (2, 1 + cfg.num_tokens, cfg.hidden_size)
    assert out.pooler_output.shape == (2, cfg.hidden_size)
    mim = MageForMaskedImageModeling(cfg).eval()
    input_ids, drop_mask, labels = masked_inputs(cfg)
    out = mim(input_ids=input_ids, token_drop_mask=drop_mask, labels=labels)
    assert out.logits.shape == (2, 1 + cfg.num_tokens, cfg.vocab_size)
    assert out.encoder_last_hidden_state.shape == (2, 1 + cfg.num_tokens - 4, cfg.hidden_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    classifier = MageForImageClassification(MageConfig(**tiny_config_kwargs(num_labels=5))).eval()
    assert classifier(pixel_values=tiny_images).logits.shape == (2, 5)


@pytest.mark.parametrize("model_class", [MageModel, MageForMaskedImageModeling, MageForImageClassification])
def test_save_load_round_trip(tiny_config, tiny_images, tmp_path, model_class):
    torch.manual_seed(0)
    model = model_class(tiny_config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = model_class.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if model_class is MageForMaskedImageModeling:
        input_ids, drop_mask, labels = masked_inputs(tiny_config)
        a = model(input_ids=input_ids, token_drop_mask=drop_mask, labels=labels)
        b = loaded(input_ids=input_ids, token_drop_mask=drop_mask, labels=labels)
        assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    else:
        a, b = model(pixel_values=tiny_images), loaded(pixel_values=tiny_images)
        assert torch.equal(a[0], b[0])


def test_encoder_loads_from_pretraining_folder(tiny_config, tiny_images, tmp_path):
    mim = MageForMaskedImageModeling(tiny_config).eval()
    mim.save_pretrained(tmp_path)
    encoder = MageModel.from_pretrained(tmp_path).eval()
    assert torch.equal(encoder(pixel_values=tiny_images).pooler_output, mim.mage(pixel_values=tiny_images).pooler_output)


def test_auto_classes(tiny_config, tmp_path):
    MageForImageClassification(tiny_config).save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is MageConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is MageModel
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is MageForImageClassification
    assert type(AutoModelForMaskedImageModeling.from_config(tiny_config)) is MageForMaskedImageModeling
    assert type(AutoModel.from_config(tiny_config)) is MageModel


# --------------------------------------------------------------------------- attention paths, gradient checkpointing


def test_eager_and_sdpa_agree(tiny_config, tmp_path):
    torch.manual_seed(0)
    MageForMaskedImageModeling(tiny_config).save_pretrained(tmp_path)
    input_ids, drop_mask, labels = masked_inputs(tiny_config)
    outputs = {}
    for impl in ("eager", "sdpa"):
        model = MageForMaskedImageModeling.from_pretrained(tmp_path, attn_implementation=impl).eval()
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            outputs[impl] = model(input_ids=input_ids, token_drop_mask=drop_mask, labels=labels)
    torch.testing.assert_close(outputs["eager"].logits, outputs["sdpa"].logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["eager"].loss, outputs["sdpa"].loss, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_same_gradients():
    config = no_dropout_config()
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(config).train()
    input_ids, drop_mask, labels = masked_inputs(config)

    def gradients():
        model.zero_grad()
        model(input_ids=input_ids, token_drop_mask=drop_mask, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    calls = []
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            checkpoint = layer._gradient_checkpointing_func
            layer._gradient_checkpointing_func = lambda *a, _f=checkpoint, **k: calls.append(1) or _f(*a, **k)
    checkpointed = gradients()
    assert len(calls) == config.num_hidden_layers + config.decoder_num_hidden_layers
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


# --------------------------------------------------------------------------- masking


def truncated_gaussian_mean(mean: float, std: float, low: float, high: float) -> float:
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    a, b = (low - mean) / std, (high - mean) / std
    return mean + std * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))


def test_mask_ratio_distribution(tiny_config):
    cfg = tiny_config
    generator = torch.Generator().manual_seed(0)
    ratios = torch.tensor([sample_mask_ratio(cfg.mask_ratio_mean, cfg.mask_ratio_std, cfg.mask_ratio_min,
                                             cfg.mask_ratio_max, generator) for _ in range(4000)])
    assert float(ratios.min()) >= 0.5 and float(ratios.max()) <= 1.0
    expected = truncated_gaussian_mean(0.55, 0.25, 0.5, 1.0)  # about 0.70
    assert abs(float(ratios.mean()) - expected) < 0.01


def test_forward_from_pixels_masks_like_the_original(tiny_config, tiny_images):
    cfg = tiny_config
    model = MageForMaskedImageModeling(cfg).eval()
    generator = torch.Generator().manual_seed(0)
    num_tokens, num_dropped = cfg.num_tokens, math.ceil(0.5 * cfg.num_tokens)
    labels = model.mage.tokenize(tiny_images)
    with torch.no_grad():
        outputs = [model(pixel_values=tiny_images, generator=generator) for _ in range(4)]
    samples = [(out.token_mask, out.token_drop_mask) for out in outputs]
    samples += [model.sample_masks(4, "cpu", generator) for _ in range(300)]  # what forward draws, without the model
    fractions = []
    for masked, dropped in samples:
        assert not masked[:, 0].any() and not dropped[:, 0].any()
        assert (dropped <= masked).all()
        assert (dropped.sum(dim=1) == num_dropped).all()
        counts = masked.sum(dim=1)
        assert (counts == counts[0]).all()  # one ratio per batch: ceil(r * N) in every row
        assert num_dropped <= int(counts[0]) <= num_tokens
        fractions.append(int(counts[0]) / num_tokens)
    for out in outputs:
        assert torch.equal(out.labels, labels) and torch.isfinite(out.loss)
        kept = out.token_mask[:, 1:] & ~out.token_drop_mask[:, 1:]
        assert out.encoder_last_hidden_state.shape[1] == 1 + num_tokens - num_dropped and kept.any()
    # ceil(r N) / N is r rounded up to a 1/N step: its mean is within one step of the truncated-Gaussian mean
    mean, expected = sum(fractions) / len(fractions), truncated_gaussian_mean(0.55, 0.25, 0.5, 1.0)
    assert expected - 0.02 < mean < expected + 1 / num_tokens + 0.02


def test_masking_is_reproducible_with_a_generator(tiny_config, tiny_images):
    model = MageForMaskedImageModeling(tiny_config).eval()
    a = model(pixel_values=tiny_images, generator=torch.Generator().manual_seed(3))
    b = model(pixel_values=tiny_images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.token_mask, b.token_mask) and torch.equal(a.token_drop_mask, b.token_drop_mask)


# --------------------------------------------------------------------------- loss


def test_label_smoothing_loss_matches_formula(tiny_config):
    cfg = tiny_config
    model = MageForMaskedImageModeling(cfg).eval()
    input_ids, drop_mask, labels = masked_inputs(cfg)
    with torch.no_grad():
        out = model(input_ids=input_ids, token_drop_mask=drop_mask, labels=labels)
    eps, codebook = cfg.label_smoothing, cfg.codebook_size
    log_probs = F.log_softmax(out.logits[:, 1:, :codebook], dim=-1)
    target = torch.full_like(log_probs, eps / codebook).scatter_add(
        -1, labels.unsqueeze(-1), torch.full_like(labels, 1.0 - eps, dtype=log_probs.dtype).unsqueeze(-1))
    per_token = -(target * log_probs).sum(dim=-1)
    masked = input_ids[:, 1:] == cfg.mask_token_id
    expected = per_token[masked].mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- bad inputs


def test_bad_pixel_values_name_the_argument(tiny_config, tiny_images):
    model = MageModel(tiny_config).eval()
    with pytest.raises(ValueError, match="pixel_values.*shape"):
        model(pixel_values=tiny_images[:, :1])
    with pytest.raises(ValueError, match="pixel_values.*shape"):
        model(pixel_values=torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"pixel_values.*\[0, 1\]"):
        model(pixel_values=tiny_images * 2 - 1)
    with pytest.raises(ValueError, match="pixel_values.*input_ids"):
        model()


def test_bad_token_inputs_name_the_argument(tiny_config):
    cfg = tiny_config
    model = MageForMaskedImageModeling(cfg).eval()
    input_ids, drop_mask, labels = masked_inputs(cfg)
    too_big = input_ids.clone()
    too_big[0, 3] = cfg.vocab_size
    with pytest.raises(ValueError, match="input_ids.*vocabulary"):
        model(input_ids=too_big)
    with pytest.raises(ValueError, match="input_ids.*shape"):
        model(input_ids=input_ids[:, :10])
    # Row 0 drops an unmasked image token instead of one of its masked ones (same count per row).
    unmasked_drop = drop_mask.clone()
    unmasked_drop[0, int(drop_mask[0].nonzero()[0])] = False
    unmasked_drop[0, int((input_ids[0, 1:] != cfg.mask_token_id).nonzero()[0]) + 1] = True
    with pytest.raises(ValueError, match="token_drop_mask.*not masked"):
        model(input_ids=input_ids, token_drop_mask=unmasked_drop)
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=input_ids, labels=labels + cfg.codebook_size)
    with pytest.raises(ValueError, match="token_drop_mask"):
        model(input_ids=input_ids, token_drop_mask=drop_mask[:, 1:])
