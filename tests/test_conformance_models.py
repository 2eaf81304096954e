"""The three MAGE model classes against the conventions transformers' common model tests check (issue 11, items
1-8) and the model-side input checks of issue 12 (items 1, 5, 7): meta-device construction, weight init of every
module, vocabulary resizing, `problem_type`, reproducible masking with separate encoder/decoder outputs, no unused
parameters, `torch.export` / `torch.compile(fullgraph=True)`, and transformers' attention interface."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from accelerate import init_empty_weights
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import local_torch_dtype

import mage_hf.modeling_mage as modeling_mage
from mage_hf import MageConfig, MageForImageClassification, MageForMaskedImageModeling, MageModel
from mage_hf.masking import sample_mask_ratio
from mage_hf.modeling_mage import drop_path_rates

from conftest import tiny_config_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")

MODEL_CLASSES = [MageModel, MageForMaskedImageModeling, MageForImageClassification]


def no_dropout_config(**overrides) -> MageConfig:
    return MageConfig(**tiny_config_kwargs(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                           embedding_dropout_prob=0.0, **overrides))


def token_ids(config: MageConfig, batch: int = 2, seed: int = 0) -> torch.LongTensor:
    """(B, 1 + N): the fake class, then codebook ids with a quarter of them masked."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.codebook_size, (batch, config.num_tokens), generator=generator)
    ids = torch.where(torch.rand(batch, config.num_tokens, generator=generator) < 0.25, config.mask_token_id, ids)
    return torch.cat([torch.full((batch, 1), config.fake_class_label), ids], dim=1)


def first_output(model, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


# =========================================================================== 1. meta device


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_models_build_on_the_meta_device_and_initialise_every_tensor(tiny_config, tiny_images, model_class):
    with torch.device("meta"):
        model = model_class(copy.deepcopy(tiny_config))
    assert all(p.device.type == "meta" for p in model.parameters())
    # Every tensor is a registered parameter or buffer: after to_empty + init_weights nothing is left on meta.
    model.to_empty(device="cpu")
    model.init_weights()
    inputs = {"pixel_values": tiny_images}
    if model_class is MageForMaskedImageModeling:
        inputs.update(noise=torch.rand(2, tiny_config.num_tokens), mask_ratio=0.75)
    with torch.no_grad():
        assert torch.isfinite(first_output(model.eval(), inputs)).all()


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_init_empty_weights_and_device_map_auto(tiny_config, tmp_path, model_class):
    with init_empty_weights():
        empty = model_class(copy.deepcopy(tiny_config))
    assert {p.device.type for p in empty.parameters()} == {"meta"}
    torch.manual_seed(0)
    model_class(tiny_config).save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path, device_map="auto")
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}


def test_drop_path_rates_rise_linearly_like_linspace():
    rates = drop_path_rates(0.1, 12)
    torch.testing.assert_close(torch.tensor(rates, dtype=torch.float64), torch.linspace(0, 0.1, 12, dtype=torch.float64))
    assert drop_path_rates(0.3, 1) == [0.0] and drop_path_rates(0.3, 0) == []


# =========================================================================== 2. init of every module


def test_tokenizer_without_weights_is_initialised_deterministically(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = MageModel(tiny_config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("vqvae.")}
    model.save_pretrained(tmp_path, state_dict=state)
    loads = []
    for _ in range(2):
        torch.manual_seed(1)
        loads.append(MageModel.from_pretrained(tmp_path).vqvae.state_dict())
    for key, value in loads[0].items():
        assert torch.isfinite(value).all() and torch.equal(value, loads[1][key]), key
    codebook = loads[0]["quantize.embedding.weight"]
    assert codebook.abs().max() <= 1.0 / codebook.shape[0]  # the original VQGAN's uniform(-1/K, 1/K)
    norm = model.vqvae.encoder.norm_out
    assert torch.equal(loads[0]["encoder.norm_out.weight"], torch.ones_like(norm.weight))
    conv = loads[0]["encoder.conv_in.weight"]
    assert conv.abs().max() <= 1.0 / math.sqrt(conv[0].numel())  # PyTorch's default kaiming-uniform bound


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_init_weights_from_nothing_equals_init(tiny_config, model_class, monkeypatch):
    """`from_pretrained` with no weights at all initialises every tensor exactly as `__init__` does (each module's
    init seeded alike, as transformers' `test_can_init_all_missing_weights`)."""
    original = modeling_mage.MagePreTrainedModel._initialize_weights

    def seeded(self, *args, **kwargs):
        torch.manual_seed(0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(modeling_mage.MagePreTrainedModel, "_initialize_weights", seeded)
    built = model_class(copy.deepcopy(tiny_config))
    loaded = model_class.from_pretrained(None, config=copy.deepcopy(tiny_config), state_dict={})
    for key, value in built.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_from_config_in_bfloat16_keeps_the_tokenizer_float32(tiny_config, model_class):
    model = model_class._from_config(copy.deepcopy(tiny_config), dtype=torch.bfloat16)
    base = model.mage if model_class is not MageModel else model
    assert {p.dtype for p in base.vqvae.parameters()} == {torch.float32}
    assert base.embeddings.word_embeddings.weight.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    with local_torch_dtype(torch.float16, model_class.__name__):
        model = model_class(copy.deepcopy(tiny_config))
    base = model.mage if model_class is not MageModel else model
    assert {p.dtype for p in base.vqvae.parameters()} == {torch.float32}


# =========================================================================== 3. vocabulary


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
def test_set_input_embeddings(tiny_config, model_class):
    model = model_class(tiny_config)
    new = nn.Embedding(tiny_config.vocab_size, tiny_config.hidden_size)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new


def test_resize_token_embeddings_is_refused_with_a_pointer(tiny_config):
    model = MageForMaskedImageModeling(tiny_config)
    assert model.resize_token_embeddings(tiny_config.vocab_size) is model.get_input_embeddings()
    assert model.resize_token_embeddings() is model.get_input_embeddings()
    with pytest.raises(ValueError, match=r"mask_token_id.*resize_class_tokens\(num_classes\)"):
        model.resize_token_embeddings(tiny_config.vocab_size + 10)


def test_vocab_size_is_derived_and_refuses_another_value(tiny_config):
    tiny_config.vocab_size = tiny_config.vocab_size  # the same value is a no-op
    with pytest.raises(ValueError, match="vocab_size.*num_class_tokens"):
        tiny_config.vocab_size = 100
    with pytest.raises(ValueError, match="vocab_size"):
        MageConfig(**tiny_config_kwargs(vocab_size=5))


@pytest.mark.parametrize("num_classes", [4, 20])
def test_resize_class_tokens_keeps_the_layout(tiny_config, num_classes, tmp_path):
    cfg = tiny_config  # codebook 16, class tokens 16..26 (26 = fake), mask 27
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(cfg).eval()
    with torch.no_grad():
        model.mlm_head.bias.normal_()
    old_rows, old_bias = model.get_input_embeddings().weight.clone(), model.mlm_head.bias.clone()
    old_fake, old_mask, codebook = cfg.fake_class_label, cfg.mask_token_id, cfg.codebook_size
    model.resize_class_tokens(num_classes)
    assert cfg.num_class_tokens == num_classes + 1 and cfg.fake_class_label == codebook + num_classes
    assert cfg.vocab_size == codebook + num_classes + 2 and cfg.mask_token_id == cfg.vocab_size - 1
    rows, bias = model.get_input_embeddings().weight, model.mlm_head.bias
    assert rows.shape == (cfg.vocab_size, cfg.hidden_size) and bias.shape == (cfg.vocab_size,)
    real_kept = min(num_classes, old_fake - codebook)
    for new_id, old_id in [*[(i, i) for i in range(codebook + real_kept)], (cfg.fake_class_label, old_fake),
                           (cfg.mask_token_id, old_mask)]:
        assert torch.equal(rows[new_id], old_rows[old_id]) and bias[new_id] == old_bias[old_id], new_id
    for new_id in range(codebook + real_kept, cfg.fake_class_label):  # classes the old vocabulary lacked
        assert not any(torch.equal(rows[new_id], row) for row in old_rows) and bias[new_id] == 0
    ids = token_ids(cfg)
    ids[:, 0] = codebook + num_classes - 1  # the last real class
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (2, 1 + cfg.num_tokens, cfg.vocab_size)
    model.save_pretrained(tmp_path)
    reloaded = MageForMaskedImageModeling.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, logits)


def test_resize_class_tokens_refuses_bad_counts(tiny_config):
    model = MageModel(tiny_config)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            model.resize_class_tokens(bad)


# =========================================================================== 4. problem_type


def classifier(num_labels: int, problem_type: str | None = None) -> MageForImageClassification:
    torch.manual_seed(0)
    return MageForImageClassification(no_dropout_config(num_labels=num_labels, problem_type=problem_type)).eval()


@pytest.mark.parametrize("problem_type, num_labels, labels, loss_fn", [
    (None, 1, torch.tensor([0.5, -1.0]), lambda logits, y: F.mse_loss(logits.squeeze(-1), y)),
    ("regression", 3, torch.rand(2, 3), F.mse_loss),
    (None, 3, torch.tensor([2, 0]), F.cross_entropy),
    (None, 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), F.binary_cross_entropy_with_logits),
    ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), F.binary_cross_entropy_with_logits),
    ("single_label_classification", 3, torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]),
     lambda logits, y: torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1).mean()),
])
def test_problem_type_selects_the_loss(tiny_images, problem_type, num_labels, labels, loss_fn):
    model = classifier(num_labels, problem_type)
    with torch.no_grad():
        out = model(pixel_values=tiny_images, labels=labels)
    torch.testing.assert_close(out.loss, loss_fn(out.logits.float(), labels), rtol=1e-6, atol=1e-6)
    assert model.config.problem_type == problem_type  # inferred per call, the config is left as it was


def test_single_label_rejects_float_class_ids(tiny_images):
    model = classifier(3, "single_label_classification")
    with pytest.raises(ValueError, match="labels.*class ids"):
        model(pixel_values=tiny_images, labels=torch.tensor([1.0, 2.0]))


# =========================================================================== 5. MIM outputs and reproducible masks


def test_masked_image_modeling_separates_encoder_and_decoder_outputs(tiny_images):
    cfg = no_dropout_config(decoder_num_hidden_layers=2)
    model = MageForMaskedImageModeling(cfg).eval()
    noise = torch.rand(2, cfg.num_tokens)
    with torch.no_grad():
        out = model(pixel_values=tiny_images, noise=noise, mask_ratio=0.75, output_hidden_states=True,
                    output_attentions=True)
    kept = 1 + cfg.num_tokens - math.ceil(cfg.mask_ratio_min * cfg.num_tokens)
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    assert {h.shape for h in out.hidden_states} == {(2, kept, cfg.hidden_size)}
    assert len(out.attentions) == cfg.num_hidden_layers
    assert {a.shape for a in out.attentions} == {(2, cfg.num_attention_heads, kept, kept)}
    assert len(out.decoder_hidden_states) == cfg.decoder_num_hidden_layers + 1
    assert {h.shape for h in out.decoder_hidden_states} == {(2, 1 + cfg.num_tokens, cfg.decoder_hidden_size)}
    assert len(out.decoder_attentions) == cfg.decoder_num_hidden_layers
    assert {a.shape for a in out.decoder_attentions} == {(2, cfg.decoder_num_attention_heads, 1 + cfg.num_tokens,
                                                         1 + cfg.num_tokens)}


def test_noise_and_mask_ratio_fix_the_masks(tiny_config, tiny_images):
    cfg = tiny_config
    model = MageForMaskedImageModeling(cfg).eval()
    noise = torch.rand(2, cfg.num_tokens)
    with torch.no_grad():
        a = model(pixel_values=tiny_images, noise=noise, mask_ratio=0.75)
        b = model(pixel_values=tiny_images, noise=noise, mask_ratio=0.75)
        c = model(pixel_values=tiny_images, noise=noise.flip(1), mask_ratio=0.75)
    assert torch.equal(a.token_mask, b.token_mask) and torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert not torch.equal(a.token_mask, c.token_mask)
    order = noise.argsort(dim=1)
    num_masked, num_dropped = math.ceil(0.75 * cfg.num_tokens), math.ceil(cfg.mask_ratio_min * cfg.num_tokens)
    for row in range(2):
        assert set(a.token_mask[row, 1:].nonzero().flatten().tolist()) == set(order[row, :num_masked].tolist())
        assert set(a.token_drop_mask[row, 1:].nonzero().flatten().tolist()) == set(order[row, :num_dropped].tolist())


def test_the_default_random_masking_is_the_generator_draws(tiny_config, tiny_images):
    """Unchanged default path: the ratio is drawn first, then (B, N) uniform noise, both from `generator`; passing
    those draws as `mask_ratio` / `noise` gives the same result."""
    cfg = tiny_config
    model = MageForMaskedImageModeling(cfg).eval()
    with torch.no_grad():
        drawn = model(pixel_values=tiny_images, generator=torch.Generator().manual_seed(7))
        replay = torch.Generator().manual_seed(7)
        ratio = sample_mask_ratio(cfg.mask_ratio_mean, cfg.mask_ratio_std, cfg.mask_ratio_min, cfg.mask_ratio_max, replay)
        noise = torch.rand(2, cfg.num_tokens, generator=replay)
        given = model(pixel_values=tiny_images, noise=noise, mask_ratio=ratio)
        noise_only = model(pixel_values=tiny_images, noise=noise, generator=torch.Generator().manual_seed(7))
    for out in (given, noise_only):
        assert torch.equal(out.token_mask, drawn.token_mask) and torch.equal(out.logits, drawn.logits)
    assert int(drawn.token_mask[0].sum()) == math.ceil(ratio * cfg.num_tokens)


def test_fixed_masks_make_batching_and_attention_paths_equivalent(tiny_images, tmp_path):
    cfg = no_dropout_config()
    torch.manual_seed(0)
    MageForMaskedImageModeling(cfg).save_pretrained(tmp_path)
    noise = torch.rand(2, cfg.num_tokens)
    logits = {}
    for impl in ("eager", "sdpa"):
        model = MageForMaskedImageModeling.from_pretrained(tmp_path, attn_implementation=impl).eval()
        with torch.no_grad():
            logits[impl] = model(pixel_values=tiny_images, noise=noise, mask_ratio=0.6).logits
            single = model(pixel_values=tiny_images[1:], noise=noise[1:], mask_ratio=0.6).logits
        torch.testing.assert_close(single, logits[impl][1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits["eager"], logits["sdpa"], rtol=1e-5, atol=1e-5)


def test_bad_noise_and_mask_ratio_name_the_argument(tiny_config, tiny_images):
    model = MageForMaskedImageModeling(tiny_config).eval()
    with pytest.raises(ValueError, match="mask_ratio.*mask_ratio_min"):
        model(pixel_values=tiny_images, mask_ratio=0.2)
    with pytest.raises(ValueError, match="noise.*shape"):
        model(pixel_values=tiny_images, noise=torch.rand(2, 5))
    with pytest.raises(TypeError, match="noise"):
        model(pixel_values=tiny_images, noise=torch.ones(2, tiny_config.num_tokens, dtype=torch.long))
    with pytest.raises(ValueError, match="noise.*input_ids"):
        model(input_ids=token_ids(tiny_config), noise=torch.rand(2, tiny_config.num_tokens))


def test_predict_logits_is_forward_without_checks(tiny_config):
    model = MageForMaskedImageModeling(tiny_config).eval()
    ids = token_ids(tiny_config)
    with torch.no_grad():
        assert torch.equal(model.predict_logits(ids), model(input_ids=ids).logits)


# =========================================================================== 6. every parameter is used


def assert_every_trainable_parameter_has_a_gradient(model, loss):
    model.zero_grad()
    loss.backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "cls", "tokens"])
def test_classifier_trains_every_parameter(tiny_images, tmp_path, pooling, checkpointing):
    model = MageForImageClassification(no_dropout_config(num_labels=3, classifier_pooling=pooling))
    model = MageForImageClassification.from_pretrained(_saved(model, tmp_path)).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    unused_norm = "mage.norm." if pooling == "mean" else "mage.fc_norm."
    assert not any(key.startswith(unused_norm) for key in model.state_dict())
    assert_every_trainable_parameter_has_a_gradient(model, model(pixel_values=tiny_images, labels=torch.tensor([0, 2])).loss)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("loaded", [False, True])
def test_masked_image_modeling_trains_every_trainable_parameter(tiny_images, tmp_path, checkpointing, loaded):
    cfg = no_dropout_config()
    model = MageForMaskedImageModeling(cfg).train()
    if loaded:  # transformers' loading recreates parameters as trainable: the frozen ones must stay frozen
        model = MageForMaskedImageModeling.from_pretrained(_saved(model, tmp_path)).train()
        cfg = model.config
    if checkpointing:
        model.activation_checkpointing_enable()
    assert "mage.fc_norm.weight" in model.state_dict() and not model.mage.fc_norm.weight.requires_grad
    out = model(pixel_values=tiny_images, generator=torch.Generator().manual_seed(0))
    assert_every_trainable_parameter_has_a_gradient(model, out.loss)
    # MAGE-C reads the pooled features: attaching its head makes `fc_norm` trainable, and it is trained.
    from mage_hf.training.contrastive import MageContrastiveHead

    model.contrastive_head = MageContrastiveHead(cfg)
    assert model.mage.fc_norm.weight.requires_grad
    out = model(pixel_values=tiny_images, generator=torch.Generator().manual_seed(0))
    loss = out.loss + model.contrastive_head(out.pooler_output).square().mean()
    assert_every_trainable_parameter_has_a_gradient(model, loss)
    model.contrastive_head = None
    assert not model.mage.fc_norm.weight.requires_grad


@pytest.mark.parametrize("pooling", ["mean", "cls", "tokens"])
def test_classifier_loads_a_pretraining_folder_without_unexpected_norms(tiny_config, tmp_path, pooling):
    MageForMaskedImageModeling(tiny_config).save_pretrained(tmp_path)
    model, info = MageForImageClassification.from_pretrained(
        tmp_path, num_labels=3, classifier_pooling=pooling, output_loading_info=True
    )
    assert not info["unexpected_keys"]
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    encoder, info = MageModel.from_pretrained(_saved(model, tmp_path / "classifier"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_token_head_reads_every_image_token_in_grid_order(tiny_images):
    config = no_dropout_config(num_labels=3, classifier_pooling="tokens")
    model = MageForImageClassification(config).eval()
    assert model.classifier.in_features == config.num_tokens * config.hidden_size
    with torch.no_grad():
        hidden = model.mage(pixel_values=tiny_images).last_hidden_state  # (B, 1 + num_tokens, D), final norm applied
        logits = model(pixel_values=tiny_images).logits
    expected = torch.einsum("bnd,cnd->bc", hidden[:, 1:], model.classifier.weight.view(3, config.num_tokens, -1))
    assert torch.allclose(logits, expected + model.classifier.bias, atol=1e-5)
    with pytest.raises(ValueError, match="classifier_pooling"):
        no_dropout_config(classifier_pooling="max")


def _saved(model, path):
    model.save_pretrained(path)
    return path


# =========================================================================== 7. torch.export / torch.compile


def export_cases(config: MageConfig):
    pixels = torch.rand(2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(2, config.num_tokens, generator=torch.Generator().manual_seed(1))
    return {
        "model-pixels": (MageModel, {"pixel_values": pixels}),
        "model-ids": (MageModel, {"input_ids": token_ids(config)}),
        "classifier-pixels": (MageForImageClassification, {"pixel_values": pixels}),
        "mim-ids": (MageForMaskedImageModeling, {"input_ids": token_ids(config)}),
        "mim-pixels-fixed-masks": (MageForMaskedImageModeling, {"pixel_values": pixels, "noise": noise, "mask_ratio": 0.75}),
    }


EXPORT_CASES = list(export_cases(MageConfig(**tiny_config_kwargs())))
# Each export takes 1-5 s here: every case with a static batch, two with a dynamic one (the others with -m slow).
FAST_DYNAMIC = ("model-pixels", "mim-ids")
EXPORT_PARAMS = [(case, False) for case in EXPORT_CASES] + [
    (case, True) if case in FAST_DYNAMIC else pytest.param(case, True, marks=pytest.mark.slow) for case in EXPORT_CASES
]


@pytest.mark.parametrize("case, dynamic", EXPORT_PARAMS)
def test_torch_export(case, dynamic):
    config = MageConfig(**tiny_config_kwargs(num_labels=3))
    model_class, inputs = export_cases(config)[case]
    torch.manual_seed(0)
    model = model_class(config).eval()
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=64)
        shapes = {k: {0: batch} if isinstance(v, torch.Tensor) else None for k, v in inputs.items()}
    exported = torch.export.export(model, (), inputs, dynamic_shapes=shapes)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(**inputs)[0], model(**inputs)[0])
        if dynamic:  # another batch size runs through the same graph
            single = {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            torch.testing.assert_close(exported.module()(**single)[0], model(**single)[0])


@pytest.mark.parametrize("case", EXPORT_CASES)
def test_torch_compile_fullgraph(case):
    """No graph break (the `eager` backend traces with dynamo exactly as inductor would, without compiling)."""
    config = MageConfig(**tiny_config_kwargs(num_labels=3))
    model_class, inputs = export_cases(config)[case]
    model = model_class(config).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs)[0], model(**inputs)[0])


def test_eager_checks_still_raise_after_export(tiny_config):
    model = MageModel(tiny_config).eval()
    torch.export.export(model, (), {"input_ids": token_ids(tiny_config)})
    bad = token_ids(tiny_config)
    bad[0, 3] = tiny_config.codebook_size
    with pytest.raises(ValueError, match="input_ids"):
        model(input_ids=bad)


# =========================================================================== 8. attention interface


def test_set_attn_implementation_switches_the_attention(tiny_config, caplog):
    model = MageForMaskedImageModeling(tiny_config).eval()
    assert model.config._attn_implementation == "sdpa" and type(model)._can_set_attn_implementation()
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager" and model.mage.config._attn_implementation == "eager"
    assert "does not support setting its attention" not in caplog.text


def test_a_registered_attention_function_is_used(tiny_config):
    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("mage_test_counting", counting_attention)
    model = MageForMaskedImageModeling(no_dropout_config()).eval()
    ids = token_ids(model.config)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        model.set_attn_implementation("mage_test_counting")
        logits = model(input_ids=ids).logits
    assert len(calls) == model.config.num_hidden_layers + model.config.decoder_num_hidden_layers
    torch.testing.assert_close(logits, reference, rtol=0, atol=0)


def test_eager_attention_is_the_original_maths():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 3, 9, 8, generator=generator) for _ in range(3))
    module = nn.Module().eval()
    context, weights = modeling_mage.mage_eager_attention_forward(module, query, key, value, None, scaling=8**-0.5)
    scores = (query @ key.transpose(-2, -1)) * 8**-0.5
    expected = (scores - scores.amax(dim=-1, keepdim=True)).softmax(dim=-1)
    assert torch.equal(weights, expected) and torch.equal(context, (expected @ value).transpose(1, 2))


def test_sdpa_keeps_the_cpu_low_precision_path(tiny_config, monkeypatch):
    calls = []
    fast = modeling_mage.cpu_low_precision_attention
    monkeypatch.setattr(modeling_mage, "cpu_low_precision_attention", lambda *a: calls.append(1) or fast(*a))
    model = MageForMaskedImageModeling(tiny_config).eval().to(torch.bfloat16)
    with torch.no_grad():
        model(input_ids=token_ids(tiny_config))
    assert len(calls) == tiny_config.num_hidden_layers + tiny_config.decoder_num_hidden_layers


def test_attentions_and_hidden_states_are_captured_with_sdpa(tiny_config, tiny_images):
    model = MageModel(tiny_config).eval()
    with torch.no_grad():
        out = model(pixel_values=tiny_images, output_attentions=True, output_hidden_states=True)
        last_only = model(pixel_values=tiny_images, output_hidden_states=[-1])
    assert len(out.attentions) == tiny_config.num_hidden_layers and len(out.hidden_states) == tiny_config.num_hidden_layers + 1
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones_like(out.attentions[0].sum(-1)))
    # (`out` ran the eager maths for its attention maps, `last_only` SDPA)
    assert last_only.hidden_states[0] is None
    torch.testing.assert_close(last_only.hidden_states[-1], out.hidden_states[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # flex attention compiles its kernel (~40 s on a small CPU)
def test_flex_attention_matches_eager():
    model = MageForMaskedImageModeling(no_dropout_config()).eval()
    ids = token_ids(model.config)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        eager = model(input_ids=ids).logits
        model.set_attn_implementation("flex_attention")
        flex = model(input_ids=ids).logits
    torch.testing.assert_close(flex, eager, rtol=1e-5, atol=1e-5)


# =========================================================================== issue 12: bad inputs, one clear line


def test_class_token_ids_at_image_positions_are_rejected(tiny_config):
    cfg = tiny_config
    ids = token_ids(cfg)
    class_at_image = ids.clone()
    class_at_image[1, 5] = cfg.codebook_size + 3
    codebook_at_zero = ids.clone()
    codebook_at_zero[0, 0] = 3
    mask_at_zero = ids.clone()
    mask_at_zero[0, 0] = cfg.mask_token_id
    for model in (MageModel(cfg).eval(), MageForMaskedImageModeling(cfg).eval()):
        with pytest.raises(ValueError, match=r"input_ids. at image positions.*got 19 at \[1, 5\]"):
            model(input_ids=class_at_image)
        with pytest.raises(ValueError, match=r"image positions"):
            model(input_ids=class_at_image[:, 1:])
        for bad in (codebook_at_zero, mask_at_zero):
            with pytest.raises(ValueError, match=r"input_ids\[:, 0\]. must be a class token"):
                model(input_ids=bad)
        model(input_ids=ids)  # mask tokens at image positions and the fake class at 0 are fine


@pytest.mark.parametrize("model_class", [MageModel, MageForMaskedImageModeling])
def test_float_input_ids_are_a_type_error(tiny_config, model_class):
    with pytest.raises(TypeError, match="input_ids.*integer.*float32"):
        model_class(tiny_config)(input_ids=token_ids(tiny_config).float())


def test_class_labels_are_checked_and_accept_lists(tiny_config, tiny_images):
    model = MageModel(tiny_config).eval()
    with pytest.raises(ValueError, match=r"class_labels.*\[99\].*\[0, 10\]"):
        model(pixel_values=tiny_images, class_labels=[99])
    with pytest.raises(ValueError, match="class_labels.*1 or 2"):
        model(pixel_values=tiny_images, class_labels=[1, 2, 3])
    with pytest.raises(TypeError, match="class_labels"):
        model(pixel_values=tiny_images, class_labels=[1.5, 2.0])
    with torch.no_grad():
        from_list = model(pixel_values=tiny_images, class_labels=[1, 2]).last_hidden_state
        from_tensor = model(pixel_values=tiny_images, class_labels=torch.tensor([1, 2])).last_hidden_state
        one_for_all = model(pixel_values=tiny_images, class_labels=1).last_hidden_state
        both_one = model(pixel_values=tiny_images, class_labels=[1, 1]).last_hidden_state
        ids = model(input_ids=model.tokenize(tiny_images), class_labels=[1, 2]).last_hidden_state
    assert torch.equal(from_list, from_tensor) and torch.equal(one_for_all, both_one) and torch.equal(ids, from_list)
    with pytest.raises(ValueError, match="class_labels.*position 0"):
        model(input_ids=token_ids(tiny_config), class_labels=[1, 2])


@pytest.mark.parametrize("model_class", MODEL_CLASSES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_raise(tiny_config, tiny_images, model_class, bad):
    pixels = tiny_images.clone()
    pixels[1, 0, 3, 4] = bad
    with pytest.raises(ValueError, match="pixel_values.*finite"):
        model_class(tiny_config)(pixel_values=pixels)
