"""Conversion of original MAGE checkpoints: parity with the original's outputs, the CLI, and bad checkpoints."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import pipeline

from mage_hf import (
    MAGE_PRESETS,
    MageConfig,
    MageForImageClassification,
    MageForMaskedImageModeling,
    MageModel,
    MagePipeline,
    MageScheduler,
    MageVQModel,
)
from mage_hf.convert_original import (
    DROPPED_PREFIXES,
    ConversionError,
    convert_checkpoint,
    main,
    map_original_keys,
)
from mage_hf.model_card import make_model_card

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "conversion" / "convert_original_mage.py"
TOLERANCE = 1e-4


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().float().reshape(expected.shape), expected.float()
    return float((actual - expected).norm() / expected.norm())


@torch.no_grad()
def parity_errors(pretraining: Path, gap: Path, cls: Path, ref: dict, attn_implementation: str) -> dict:
    """Every reference tensor recomputed from converted folders: relative errors, or exact-match booleans."""
    images = ref["images"]
    vqvae = MageVQModel.from_pretrained(pretraining, subfolder="vqvae").eval()
    latents = vqvae.encode(images).latents
    quantized, token_ids = vqvae.quantize_latents(latents)
    errors = {
        "vq_encoder_out": relative_error(latents, ref["vq_encoder_out"]),
        "vq_indices": torch.equal(token_ids, ref["vq_indices"]) and torch.equal(vqvae.tokenize(images), ref["vq_indices"]),
        "vq_quantized": relative_error(quantized, ref["vq_quantized"]),
        "vq_decoded": relative_error(vqvae.decode(ref["vq_quantized"]).sample, ref["vq_decoded"]),
        "vq_decoded_from_codes": relative_error(vqvae.decode_tokens(ref["vq_indices"]), ref["vq_decoded_from_codes"]),
    }
    kwargs = dict(subfolder="transformer", attn_implementation=attn_implementation)
    mim = MageForMaskedImageModeling.from_pretrained(pretraining, **kwargs).eval()
    out = mim(input_ids=ref["mim_input_ids"], token_drop_mask=ref["mim_token_drop_mask"].bool(), labels=ref["vq_indices"])
    errors.update(
        mim_encoder_out=relative_error(out.encoder_last_hidden_state, ref["mim_encoder_out"]),
        mim_logits=relative_error(out.logits, ref["mim_logits"]),
        mim_loss=relative_error(out.loss, ref["mim_loss"]),
        mim_token_all_mask=torch.equal(out.token_mask.float(), ref["mim_token_all_mask"]),
        gen_logits=relative_error(mim(input_ids=ref["gen_input_ids"]).logits, ref["gen_logits"]),
    )
    encoder = MageModel.from_pretrained(pretraining, **kwargs).eval()
    assert torch.equal(encoder.tokenize(images), ref["vq_indices"])
    probe = encoder(pixel_values=images)
    errors["probe_gap_features"] = relative_error(probe.pooler_output, ref["probe_gap_features"])
    errors["probe_cls_features"] = relative_error(probe.last_hidden_state[:, 0], ref["probe_cls_features"])
    for kind, folder in (("gap", gap), ("cls", cls)):
        classifier = MageForImageClassification.from_pretrained(folder, attn_implementation=attn_implementation).eval()
        base = classifier.mage(pixel_values=images)
        features = base.pooler_output if kind == "gap" else base.last_hidden_state[:, 0]
        errors[f"cls_{kind}_features"] = relative_error(features, ref[f"cls_{kind}_features"])
        errors[f"cls_{kind}_logits"] = relative_error(classifier(pixel_values=images).logits, ref[f"cls_{kind}_logits"])
    scheduler = MageScheduler.from_pretrained(pretraining, subfolder="scheduler")
    num_tokens = ref["vq_indices"].shape[1]
    for key, steps in (("gen_unknown_per_step", 12), ("gen_unknown_per_step_20", 20)):
        errors[key] = scheduler.masked_count_schedule(num_tokens, steps) == ref[key].tolist()
    return errors


def assert_parity(errors: dict, ref: dict) -> None:
    covered = set(errors) | {"images", "mim_input_ids", "mim_token_drop_mask", "gen_input_ids"}
    assert covered == set(ref), f"reference tensors not checked: {set(ref) - covered}"
    failures = {k: v for k, v in errors.items() if v is False or (not isinstance(v, bool) and v > TOLERANCE)}
    assert not failures, f"outside tolerance: {failures}"


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_library_conversion_matches_original(converted_original, reference_tensors, attn_implementation):
    errors = parity_errors(converted_original["pretraining"], converted_original["gap"], converted_original["cls"],
                           reference_tensors, attn_implementation)
    assert_parity(errors, reference_tensors)


def test_script_conversion_matches_original(fixture_dir, reference_tensors, converted_original, tmp_path):
    """The CLI script (run as a subprocess, and its `main` in-process) writes folders with the same parity, for
    both attention implementations."""
    config = str(fixture_dir / "config.json")
    pretraining = run_script("--checkpoint", str(fixture_dir / "original_mage.pth"), "--original-config", config,
                             "--task", "pretraining", "--output", str(tmp_path / "pt"))
    assert pretraining.returncode == 0, pretraining.stderr
    assert main(["--checkpoint", str(fixture_dir / "original_finetuned_cls.pth"), "--original-config", config,
                 "--output", str(tmp_path / "cls")]) == 0
    entries = {p.name for p in (tmp_path / "pt").iterdir()}
    assert {"README.md", "model_index.json", "scheduler", "transformer", "vqvae"} <= entries
    assert {p.suffix for p in (tmp_path / "pt").iterdir() if p.is_file()} <= {".md", ".json", ".py"}
    for impl in ("eager", "sdpa"):
        errors = parity_errors(tmp_path / "pt", converted_original["gap"], tmp_path / "cls", reference_tensors, impl)
        assert_parity(errors, reference_tensors)
    card = (tmp_path / "pt" / "README.md").read_text()
    assert "convert_original_mage.py --checkpoint" in card and "original_mage.pth" in card


def test_pipeline_folder_contents(converted_original):
    folder = converted_original["pretraining"]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["transformer"] == ["mage_hf.modeling_mage", "MageForMaskedImageModeling"]
    assert (folder / "transformer" / "model.safetensors").is_file()
    assert (folder / "vqvae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "transformer" / "preprocessor_config.json").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pth"))
    pipe = MagePipeline.from_pretrained(folder)
    config = pipe.transformer.config
    assert pipe.scheduler.config.mask_token_id == config.mask_token_id == 1064
    assert pipe.scheduler.config.choice_temperature == 6.0
    assert (config.codebook_size, config.vocab_size, config.fake_class_label) == (64, 1065, 140)
    tokens = pipe(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").images
    assert tokens.shape == (1, 64) and int(tokens.max()) < config.codebook_size
    extractor = pipeline("image-feature-extraction", model=str(folder / "transformer"))
    assert isinstance(extractor.model, MageModel)
    image = Image.fromarray((torch.rand(40, 36, 3) * 255).byte().numpy())
    assert torch.tensor(extractor(image, pool=True)).shape == (1, config.hidden_size)


def test_classifier_folder_config(converted_original):
    for kind, pooling in (("gap", "mean"), ("cls", "cls")):
        config = MageConfig.from_pretrained(converted_original[kind])
        assert config.classifier_pooling == pooling
        assert config.num_labels == 7 and config.id2label[6] == "LABEL_6"
        assert (converted_original[kind] / "preprocessor_config.json").is_file()


def test_separate_vqgan_checkpoint(fixture_dir, reference_tensors, tmp_path):
    """A checkpoint without `vqgan.*` needs `--vqgan`; with it, the tokenizer matches the original."""
    state = torch.load(fixture_dir / "original_mage.pth", weights_only=True)["model"]
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("vqgan.")}}, tmp_path / "no_vq.pth")
    config = fixture_dir / "config.json"
    with pytest.raises(ConversionError, match="--vqgan"):
        convert_checkpoint(tmp_path / "no_vq.pth", tmp_path / "a", original_config=config)
    out = convert_checkpoint(tmp_path / "no_vq.pth", tmp_path / "b", original_config=config,
                             vqgan=fixture_dir / "original_vqgan.ckpt")
    vqvae = MageVQModel.from_pretrained(out, subfolder="vqvae")
    with torch.no_grad():
        assert relative_error(vqvae.decode_tokens(reference_tensors["vq_indices"]), reference_tensors["vq_decoded_from_codes"]) < TOLERANCE
    encoder = MageModel.from_pretrained(out, subfolder="transformer")
    assert torch.equal(encoder.tokenize(reference_tensors["images"]), reference_tensors["vq_indices"])


# --------------------------------------------------------------------------- bad checkpoints and arguments


def _save_modified(fixture_dir: Path, path: Path, edit) -> Path:
    state = torch.load(fixture_dir / "original_mage.pth", weights_only=True)["model"]
    edit(state)
    torch.save({"model": state}, path)
    return path


def test_missing_key_fails(fixture_dir, tmp_path):
    path = _save_modified(fixture_dir, tmp_path / "m.pth", lambda s: s.pop("blocks.1.mlp.fc2.weight"))
    with pytest.raises(ConversionError, match=r"missing keys: \['mage\.encoder\.layers\.1\.mlp\.fc2\.weight'\]"):
        convert_checkpoint(path, tmp_path / "out", original_config=fixture_dir / "config.json")
    assert not (tmp_path / "out").exists()


def test_unknown_key_fails_or_is_ignored(fixture_dir, tmp_path, caplog):
    path = _save_modified(fixture_dir, tmp_path / "u.pth", lambda s: s.update({"extra_head.weight": torch.zeros(2)}))
    config = fixture_dir / "config.json"
    with pytest.raises(ConversionError, match=r"not understood.*--ignore-unknown-keys.*\n\s+extra_head\.weight"):
        convert_checkpoint(path, tmp_path / "a", original_config=config)
    with caplog.at_level(logging.WARNING, logger="mage_hf.convert_original"):
        convert_checkpoint(path, tmp_path / "b", original_config=config, ignore_unknown_keys=True)
    assert "extra_head.weight" in caplog.text
    assert (tmp_path / "b" / "model_index.json").is_file()


def test_config_contradicting_checkpoint_names_key_and_shapes(fixture_dir, tmp_path):
    original = json.loads((fixture_dir / "config.json").read_text())
    original["embed_dim"] = 32
    (tmp_path / "small.json").write_text(json.dumps(original))
    with pytest.raises(ConversionError, match=re.escape("token_emb.word_embeddings.weight (-> mage.embeddings.word_embeddings.weight): checkpoint (1065, 64) vs config (1065, 32)")):
        convert_checkpoint(fixture_dir / "original_mage.pth", tmp_path / "out", original_config=tmp_path / "small.json")


def test_wrong_depth_lists_extra_keys(fixture_dir, tmp_path):
    original = json.loads((fixture_dir / "config.json").read_text())
    original["depth"] = 1
    (tmp_path / "shallow.json").write_text(json.dumps(original))
    with pytest.raises(ConversionError, match=r"keys the model does not have: \[.*blocks\.1\."):
        convert_checkpoint(fixture_dir / "original_mage.pth", tmp_path / "out", original_config=tmp_path / "shallow.json")


def test_nonexistent_paths_fail_clearly(fixture_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--checkpoint.*nope\.pth"):
        convert_checkpoint(tmp_path / "nope.pth", tmp_path / "out", model="mage_vit_base_patch16")
    with pytest.raises(FileNotFoundError, match=r"--vqgan.*nope\.ckpt"):
        convert_checkpoint(fixture_dir / "original_mage.pth", tmp_path / "out", original_config=fixture_dir / "config.json",
                           vqgan=tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match=r"--original-config.*nope\.json"):
        convert_checkpoint(fixture_dir / "original_mage.pth", tmp_path / "out", original_config=tmp_path / "nope.json")


def test_not_a_checkpoint_fails(tmp_path):
    (tmp_path / "text.pth").write_text("not a pickle")
    with pytest.raises(ConversionError, match="--checkpoint"):
        convert_checkpoint(tmp_path / "text.pth", tmp_path / "out", model="mage_vit_base_patch16")


def test_non_empty_output_needs_overwrite(fixture_dir, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    (output / "README.md").write_text("old card")
    args = dict(original_config=fixture_dir / "config.json")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_checkpoint(fixture_dir / "original_finetuned_gap.pth", output, **args)
    assert (output / "README.md").read_text() == "old card"
    convert_checkpoint(fixture_dir / "original_finetuned_gap.pth", output, overwrite=True, **args)
    assert (output / "notes.txt").read_text() == "mine"  # files the conversion does not write are left alone
    assert "MAGE" in (output / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_cli_reports_errors_with_exit_status(fixture_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "nope.pth"), "--model", "mage_vit_base_patch16", "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert "nope.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # --model and --original-config are exclusive
        main(["--checkpoint", "x", "--model", "mage_vit_base_patch16", "--original-config", "y", "--output", "o"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--model", "not_a_preset", "--output", "o"])


def test_id2label_and_task_checks(fixture_dir, tmp_path):
    names = [f"class {i}" for i in range(7)]
    out = convert_checkpoint(fixture_dir / "original_finetuned_gap.pth", tmp_path / "a",
                             original_config=fixture_dir / "config.json", id2label=json.dumps(names))
    config = MageConfig.from_pretrained(out)
    assert config.id2label[3] == "class 3" and config.label2id["class 3"] == 3
    with pytest.raises(ValueError, match="--id2label.*7 classes"):
        convert_checkpoint(fixture_dir / "original_finetuned_gap.pth", tmp_path / "b",
                           original_config=fixture_dir / "config.json", id2label='["a", "b"]')
    with pytest.raises(ConversionError, match="head.weight"):
        convert_checkpoint(fixture_dir / "original_mage.pth", tmp_path / "c", original_config=fixture_dir / "config.json",
                           task="image-classification")
    with pytest.raises(ValueError, match="--dtype"):
        convert_checkpoint(fixture_dir / "original_mage.pth", tmp_path / "d", original_config=fixture_dir / "config.json",
                           dtype="int8")


def test_dtype_option(fixture_dir, tmp_path):
    out = convert_checkpoint(fixture_dir / "original_finetuned_gap.pth", tmp_path / "half",
                             original_config=fixture_dir / "config.json", dtype="bfloat16")
    model = MageForImageClassification.from_pretrained(out, dtype="auto")
    assert model.classifier.weight.dtype == torch.bfloat16


# --------------------------------------------------------------------------- model card and push


def test_model_card_contents(converted_original):
    card = (converted_original["pretraining"] / "README.md").read_text()
    assert card.startswith("---\nlicense: mit")
    for needle in ("MIT licence", "@inproceedings{li2023mage", "MAsked Generative Encoder to Unify", "--original-config",
                   "num_inference_steps=20", "choice_temperature=6.0"):
        assert needle in card
    preset_card = make_model_card("pretraining", "mage_vit_base_patch16", "cmd", "org/repo", 6.0, "mage-vitb-1600.pth")
    for number in ("11.1", "81.2", "74.7%"):
        assert number in preset_card
    assert "83.9%" in make_model_card("image-classification", "vit_large_patch16", "cmd", "org/r", 6.0, "ft.pth")


def test_push_to_hub_uploads_folder_with_card(fixture_dir, tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            folder = Path(kwargs["folder_path"])
            calls.append(("upload_folder", kwargs["repo_id"], sorted(p.name for p in folder.iterdir()),
                          (folder / "README.md").read_text()))

    monkeypatch.setattr("mage_hf.convert_original.HfApi", FakeApi)
    assert main(["--checkpoint", str(fixture_dir / "original_finetuned_gap.pth"), "--original-config",
                 str(fixture_dir / "config.json"), "--output", str(tmp_path / "out"), "--push-to-hub", "me/mage-tiny"]) == 0
    kinds = [c[0] for c in calls]
    assert kinds == ["init", "create_repo", "upload_folder"]
    assert calls[1][1] == "me/mage-tiny" and calls[1][2]["exist_ok"] is True
    _, repo_id, files, card = calls[2]
    assert repo_id == "me/mage-tiny" and {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert "--push-to-hub me/mage-tiny" in card and 'model="me/mage-tiny"' in card


# --------------------------------------------------------------------------- the real ViT-B / ViT-L shapes


def original_mage_shapes(preset: str) -> dict[str, tuple]:
    """Key -> shape of the original `models_mage.mage_vit_*_patch16` at 256 px (facts of the original factory:
    patch 16, mlp ratio 4, 2025-token vocabulary, 257 positions), VQGAN from `MageVQModel()`'s names."""
    sizes = MAGE_PRESETS[preset]
    width, depth = sizes["hidden_size"], sizes["num_hidden_layers"]
    dec_width, dec_depth = sizes["decoder_hidden_size"], sizes["decoder_num_hidden_layers"]
    vocab, positions = 2025, 257
    shapes = {
        "cls_token": (1, 1, width), "pos_embed": (1, positions, width), "mask_token": (1, 1, dec_width),
        "decoder_pos_embed": (1, positions, dec_width), "decoder_pos_embed_learned": (1, positions, dec_width),
        "token_emb.position_ids": (1, positions), "token_emb.word_embeddings.weight": (vocab, width),
        "token_emb.position_embeddings.weight": (positions, width), "token_emb.LayerNorm.weight": (width,),
        "token_emb.LayerNorm.bias": (width,), "patch_embed.proj.weight": (width, 3, 16, 16),
        "patch_embed.proj.bias": (width,), "norm.weight": (width,), "norm.bias": (width,),
        "decoder_embed.weight": (dec_width, width), "decoder_embed.bias": (dec_width,),
        "decoder_norm.weight": (dec_width,), "decoder_norm.bias": (dec_width,),
        "decoder_pred.weight": (16 * 16 * 3, dec_width), "decoder_pred.bias": (16 * 16 * 3,),
        "mlm_layer.fc.weight": (width, dec_width), "mlm_layer.fc.bias": (width,), "mlm_layer.ln.weight": (width,),
        "mlm_layer.ln.bias": (width,), "mlm_layer.bias": (1, 1, vocab),
    }
    for prefix, count, dim in (("blocks", depth, width), ("decoder_blocks", dec_depth, dec_width)):
        for i in range(count):
            block = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim),
                     "attn.qkv.bias": (3 * dim,), "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
                     "norm2.weight": (dim,), "norm2.bias": (dim,), "mlp.fc1.weight": (4 * dim, dim),
                     "mlp.fc1.bias": (4 * dim,), "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,)}
            shapes.update({f"{prefix}.{i}.{k}": v for k, v in block.items()})
    with torch.device("meta"):
        vqvae = MageVQModel()
    shapes.update({f"vqgan.{k}": tuple(v.shape) for k, v in vqvae.state_dict().items()})
    return shapes


@pytest.mark.parametrize("preset", ["mage_vit_base_patch16", "mage_vit_large_patch16"])
def test_presets_match_original_factory_shapes(preset):
    """Without materialising weights: the original's keys map onto exactly the preset model's keys and shapes."""
    shapes = original_mage_shapes(preset)
    assert shapes["vqgan.quantize.embedding.weight"] == (1024, 256)
    assert shapes["vqgan.encoder.conv_in.weight"] == (128, 3, 3, 3)
    fake = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    weights = map_original_keys(fake)
    assert not weights.unknown and all(k.startswith(DROPPED_PREFIXES) for k in weights.dropped)
    with torch.device("meta"):
        model = MageForMaskedImageModeling(MageConfig.from_preset(preset))
        vqvae = MageVQModel(**model.config.vqvae_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("mage.fc_norm.")}
    assert {k: tuple(v.shape) for k, v in weights.transformer.items()} == expected
    assert {k: tuple(v.shape) for k, v in weights.vqvae.items()} == {k: tuple(v.shape) for k, v in vqvae.state_dict().items()}
    assert model.config.num_tokens == 256 and model.config.vocab_size == 2025 and model.config.mask_token_id == 2024


_INVERSE_RULES = [
    (r"^mage\.embeddings\.word_embeddings\.", "token_emb.word_embeddings."),
    (r"^mage\.embeddings\.position_embeddings\.", "token_emb.position_embeddings."),
    (r"^mage\.embeddings\.layer_norm\.", "token_emb.LayerNorm."),
    (r"^mage\.encoder\.layers\.(\d+)\.", r"blocks.\1."),
    (r"^mage\.norm\.", "norm."),
    (r"^decoder\.embed\.", "decoder_embed."),
    (r"^decoder\.position_embeddings$", "decoder_pos_embed_learned"),
    (r"^decoder\.blocks\.layers\.(\d+)\.", r"decoder_blocks.\1."),
    (r"^decoder\.norm\.", "decoder_norm."),
    (r"^mlm_head\.fc\.", "mlm_layer.fc."),
    (r"^mlm_head\.layer_norm\.", "mlm_layer.ln."),
    (r"^mlm_head\.bias$", "mlm_layer.bias"),
]


def to_original_checkpoint(model: MageForMaskedImageModeling, vqvae: MageVQModel) -> dict[str, torch.Tensor]:
    """An original-format pre-training state dict holding `model`'s and `vqvae`'s weights (the inverse mapping)."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith(("mage.vqvae.", "mage.fc_norm.")):
            continue
        for pattern, replacement in _INVERSE_RULES:
            if re.match(pattern, key):
                new_key = re.sub(pattern, replacement, key)
                state[new_key] = tensor.reshape(1, 1, -1) if new_key == "mlm_layer.bias" else tensor
                break
        else:
            raise AssertionError(f"no inverse rule for {key}")
    state.update({f"vqgan.{k}": v for k, v in vqvae.state_dict().items()})
    width = model.config.hidden_size
    state.update(cls_token=torch.zeros(1, 1, width), pos_embed=torch.zeros(1, 257, width),
                 mask_token=torch.zeros(1, 1, model.config.decoder_hidden_size))
    state["token_emb.position_ids"] = torch.arange(257).unsqueeze(0)
    return state


@pytest.mark.slow
def test_vit_base_shaped_checkpoint_converts(tmp_path):
    """A random checkpoint with the real ViT-B shapes (~1.3 GB in memory) converts through the CLI script."""
    torch.manual_seed(0)
    model = MageForMaskedImageModeling(MageConfig.from_preset("mage_vit_base_patch16")).eval()
    vqvae = MageVQModel().eval()
    # The original keeps one VQGAN: the encoder's tokenizer is the same module as the pipeline's.
    model.mage.vqvae.load_state_dict({k: v for k, v in vqvae.state_dict().items() if not k.startswith("decoder.")})
    torch.save({"model": to_original_checkpoint(model, vqvae)}, tmp_path / "mage-vitb.pth")
    result = run_script("--checkpoint", str(tmp_path / "mage-vitb.pth"), "--model", "mage_vit_base_patch16",
                        "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    (tmp_path / "mage-vitb.pth").unlink()
    converted = MageForMaskedImageModeling.from_pretrained(tmp_path / "out", subfolder="transformer").eval()
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("mage.fc_norm.")}
    actual = converted.state_dict()
    assert [k for k, v in expected.items() if not torch.equal(actual[k], v)] == []
    converted_vq = MageVQModel.from_pretrained(tmp_path / "out", subfolder="vqvae").state_dict()
    assert [k for k, v in vqvae.state_dict().items() if not torch.equal(converted_vq[k], v)] == []
    input_ids = torch.randint(0, 1024, (1, 256))
    with torch.no_grad():
        assert torch.equal(converted(input_ids=input_ids).logits, model(input_ids=input_ids).logits)
    shutil.rmtree(tmp_path / "out")


def test_classifier_takes_imagenet_normalised_pixels(converted_original):
    """The original fine-tuning fed ImageNet-normalised pixels to the VQGAN: converted classifiers accept them and
    their processor normalises; pre-training folders keep raw [0, 1] pixels and reject normalised ones."""
    from PIL import Image

    from mage_hf import MageForImageClassification, MageImageProcessor, MageModel

    folder = converted_original["gap"]
    model = MageForImageClassification.from_pretrained(folder).eval()
    assert model.config.image_mean == [0.485, 0.456, 0.406]
    processor = MageImageProcessor.from_pretrained(folder)
    assert processor.do_normalize and processor.size == {"shortest_edge": round(32 * 292 / 256)}
    image = Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())
    pixel_values = processor(images=image, return_tensors="pt").pixel_values
    assert pixel_values.min() < 0  # normalised, not clipped to [0, 1]
    with torch.no_grad():
        assert model(pixel_values=pixel_values).logits.shape == (1, 7)

    embedder = MageModel.from_pretrained(converted_original["pretraining"], subfolder="transformer")
    assert embedder.config.image_mean is None
    with pytest.raises(ValueError, match="pixel_values.*\\[0, 1\\]"):
        embedder(pixel_values=pixel_values)
