"""`examples/pretrain.py` on real Fashion-MNIST images with a tiny tokenizer and a tiny MAGE (in-process, except
the 2-process `accelerate launch` run)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline, MageVQModel
from mage_hf.training.transforms import ImageTransformConfig, MageImageTransform
from mage_hf.training.vq_training import flatten_latents, restart_dead_codes

from conftest import free_port, run_example, tiny_config_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pretrain.py"


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory, data_dir) -> Path:
    """The conftest tiny tokenizer (16 px -> 8x8 tokens, 16 codes), codebook seeded from Fashion-MNIST latents."""
    torch.manual_seed(0)
    vqvae = MageVQModel(**tiny_config_kwargs()["vqvae_config"])
    images = np.load(data_dir / "fashion_mnist_5k.npz")["x_train"][:64]
    transform = MageImageTransform(ImageTransformConfig(image_size=16, random_crop=False))
    with torch.no_grad():
        latents = vqvae.encode(torch.stack([transform(image) for image in images])).latents
        every_code = torch.ones(vqvae.config.codebook_size, dtype=torch.bool)
        restart_dead_codes(vqvae.quantize.embedding, every_code, flatten_latents(latents), torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("vqvae")
    vqvae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_config_file(tmp_path_factory) -> Path:
    kwargs = tiny_config_kwargs()
    kwargs.pop("vqvae_config")  # comes from --vqvae
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(kwargs))
    return path


def run_pretrain(monkeypatch, *args) -> None:
    run_example(monkeypatch, "pretrain", *args)


def pretrain_args(data_dir, vqvae_dir, config_file, output_dir, **overrides) -> list[str]:
    args = {
        "vqvae": vqvae_dir, "model_config": config_file, "train_data": data_dir / "fashion_mnist_5k.npz",
        "max_train_samples": 64, "output_dir": output_dir, "per_device_train_batch_size": 16, "max_steps": 4,
        "logging_steps": 1, "save_strategy": "no", "learning_rate": 3e-3, "base_learning_rate": 0,
        "warmup_steps": 2, "disable_tqdm": "true", "seed": 0, "use_cpu": "true",
    }
    args.update(overrides)
    flags = []
    for key, value in args.items():
        if value is not None:  # None: leave the option out
            flags += [f"--{key}"] if value is True else [f"--{key}", value]
    return flags


def logged_losses(output_dir: Path, key: str = "loss") -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if key in entry]


def test_pretraining_loss_falls_and_writes_a_pipeline(monkeypatch, tmp_path, data_dir, vqvae_dir, model_config_file):
    output = tmp_path / "run"
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, output, max_train_samples=256,
                                             max_steps=30, logging_steps=5))
    losses = logged_losses(output)
    assert losses[-1] < losses[0] - 0.03, losses
    pipeline = MagePipeline.from_pretrained(output)
    assert isinstance(pipeline.transformer, MageForMaskedImageModeling)
    assert pipeline.scheduler.config.mask_token_id == pipeline.transformer.config.mask_token_id
    trained_codebook = pipeline.transformer.mage.vqvae.quantize.embedding.weight
    assert torch.equal(trained_codebook, MageVQModel.from_pretrained(vqvae_dir).quantize.embedding.weight)
    images = pipeline(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (1, 16, 16, 3)
    # The processor resizes with the training crops' filter (bilinear by default, PIL code 2).
    processor = json.loads((output / "transformer" / "preprocessor_config.json").read_text())
    assert processor["resample"] == 2 and processor["size"] == {"shortest_edge": 16}


def test_resumed_run_equals_uninterrupted_run(monkeypatch, tmp_path, data_dir, vqvae_dir, model_config_file):
    # 64 images / batch 16 = 4 steps per epoch: the resumed part crosses an epoch boundary.
    args = dict(max_steps=6, save_strategy="steps", save_steps=3, dataloader_num_workers=1)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, full, **args))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")  # what a run killed after step 3 leaves
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, resumed,
                                             resume_from_checkpoint="latest", **args))
    assert logged_losses(resumed) == logged_losses(full)
    expected = load_file(full / "transformer" / "model.safetensors")
    actual = load_file(resumed / "transformer" / "model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_pretokenized_run_matches_on_the_fly_run(monkeypatch, tmp_path, data_dir, vqvae_dir, model_config_file):
    # 2 epochs, 2 cached views: the cached tokens are the on-the-fly crops, so the masks and losses agree.
    args = dict(max_steps=8)
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, tmp_path / "pixels", **args))
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, tmp_path / "tokens",
                                             pretokenize=True, pretokenize_views=2, **args))
    assert list((tmp_path / "tokens" / "pretokenized").glob("pretokenized-*.arrow"))
    np.testing.assert_allclose(logged_losses(tmp_path / "tokens"), logged_losses(tmp_path / "pixels"), rtol=1e-4)


def test_class_conditional_contrastive_run(monkeypatch, tmp_path, data_dir, vqvae_dir, model_config_file):
    output = tmp_path / "run"
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, output, class_conditional=True,
                                             class_dropout_prob=0.25, contrastive=True, max_steps=2))
    assert len(logged_losses(output, "contrastive_loss")) == 2
    config = MageConfig.from_pretrained(output / "transformer")
    assert config.class_conditional and config.class_dropout_prob == 0.25
    assert config.id2label[7] == "Sneaker" and config.label2id["Bag"] == 8
    assert not any(k.startswith("contrastive_head") for k in load_file(output / "transformer" / "model.safetensors"))
    pipeline = MagePipeline.from_pretrained(output)
    images = pipeline(class_labels=["Bag"], num_inference_steps=2, guidance_scale=2.0, output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def _contradicting_codebook(tmp_path) -> str:
    kwargs = tiny_config_kwargs()
    kwargs["vqvae_config"] = {**kwargs["vqvae_config"], "codebook_size": 32}
    kwargs["fake_class_label"] = 32 + 10
    return json.dumps(kwargs)


def _folder_with_other_codebook(tmp_path) -> Path:
    kwargs = tiny_config_kwargs(fake_class_label=32 + 10)
    kwargs["vqvae_config"] = {**kwargs["vqvae_config"], "codebook_size": 32}
    path = tmp_path / "other"
    MageForMaskedImageModeling(MageConfig(**kwargs)).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (lambda tmp: {"train_data": tmp / "missing.npz"}, "train_data"),
        (lambda tmp: {"image_size": 15}, "multiple of the tokenizer's downsampling factor"),
        (lambda tmp: {"model_config": _contradicting_codebook(tmp)}, "codebook_size: model 32 vs tokenizer 16"),
        (lambda tmp: {"model_config": None, "model_name_or_path": _folder_with_other_codebook(tmp)}, "codebook_size"),
        (lambda tmp: {"model_config": '{"hidden_sise": 8}'}, "unknown keys"),
        (lambda tmp: {"model_config": "mage_vit_huge"}, "preset"),
        (lambda tmp: {"pretokenize": True, "pretokenize_batch_size": 4, "pretokenize_shard_size": 6},
         "`shard_size` must be a positive multiple of `batch_size` \\(4\\), got 6"),
        (lambda tmp: {"class_conditional": True, "model_config": json.dumps(
            {**{k: v for k, v in tiny_config_kwargs().items() if k != "vqvae_config"}, "num_class_tokens": 5,
             "fake_class_label": 20})}, "num_class_tokens"),
    ],
)
def test_bad_arguments_fail_fast(monkeypatch, tmp_path, data_dir, vqvae_dir, model_config_file, overrides, message):
    args = overrides(tmp_path)
    with pytest.raises(ValueError, match=message):
        run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, tmp_path / "out", **args))


@pytest.mark.slow
def test_two_process_accelerate_launch_writes_a_loadable_pipeline(tmp_path, data_dir, vqvae_dir, model_config_file):
    output = tmp_path / "ddp"
    command = [
        shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate", "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--main_process_port", free_port(),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(EXAMPLE), *pretrain_args(data_dir, vqvae_dir, model_config_file, output, contrastive=True,
                                     class_conditional=True, save_strategy="steps", save_steps=2),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["epoch"] == 2.0  # 64 images / (16 x 2 processes) per epoch
    pipeline = MagePipeline.from_pretrained(output)
    assert pipeline(class_labels=[1], num_inference_steps=2, output_type="latent").images.shape == (1, 64)
