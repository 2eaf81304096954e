"""`examples/train_tokenizer.py` on a few hundred real Fashion-MNIST images (in-process, tiny tokenizer)."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mage_hf import MageVQModel

from conftest import free_port, run_example

pytestmark = pytest.mark.usefixtures("single_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_tokenizer.py"
TINY_VQ = json.dumps({"base_channels": 16, "channel_multipliers": [1, 2], "num_res_blocks": 1,
                      "latent_channels": 16, "codebook_size": 32, "norm_num_groups": 8})


def run_tokenizer_script(monkeypatch, *args) -> None:
    run_example(monkeypatch, "train_tokenizer", *args)


def common_args(data_dir, output_dir, **overrides):
    args = {
        "train_data": data_dir / "fashion_mnist_5k.npz", "max_train_samples": 256, "image_size": 16, "vq_config": TINY_VQ,
        "output_dir": output_dir, "per_device_train_batch_size": 32, "learning_rate": 2e-3, "logging_steps": 5,
        "save_steps": 100, "dead_code_restart_steps": 10, "gan_weight": 0, "seed": 0,
    }
    args.update(overrides)
    return [item for key, value in args.items() for item in (f"--{key}", value)]


def read_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def test_tokenizer_loss_falls_and_saves_a_model(monkeypatch, tmp_path, data_dir):
    output = tmp_path / "vq"
    run_tokenizer_script(monkeypatch, *common_args(data_dir, output, max_steps=20, eval_split="test", max_eval_samples=64))
    records = [r for r in read_log(output) if "loss" in r]
    assert records[-1]["loss"] < 0.6 * records[0]["loss"]
    assert 0 < records[-1]["used_fraction"] <= 1 and records[-1]["perplexity"] > 1
    evaluation = [r for r in read_log(output) if "eval_psnr" in r][-1]
    assert evaluation["eval_psnr"] > 10
    vqvae = MageVQModel.from_pretrained(output)
    assert vqvae.config.codebook_size == 32 and vqvae.config.sample_size == 16
    assert vqvae.tokenize(torch.rand(1, 3, 16, 16)).shape == (1, 64)
    assert (output / "reconstructions.png").is_file()


def test_tokenizer_resume_equals_uninterrupted_run(monkeypatch, tmp_path, data_dir):
    # The GAN starts at step 3: the checkpoint holds both optimizers, the codebook counts, the schedule.
    args = dict(max_train_samples=64, max_steps=6, save_steps=3, gan_weight=0.1, gan_start_step=3,
                dead_code_restart_steps=2, discriminator_channels=8, per_device_train_batch_size=16)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_tokenizer_script(monkeypatch, *common_args(data_dir, full, **args))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")  # what a run killed after step 3 leaves
    run_tokenizer_script(monkeypatch, *common_args(data_dir, resumed, resume_from_checkpoint="latest", **args))
    expected = load_file(full / "diffusion_pytorch_model.safetensors")
    actual = load_file(resumed / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert read_log(full)[-1]["loss"] == read_log(resumed)[-1]["loss"]


def test_tokenizer_gradient_checkpointing_trains_the_same_weights(monkeypatch, tmp_path, data_dir):
    args = dict(max_train_samples=32, max_steps=2, per_device_train_batch_size=16)
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    run_tokenizer_script(monkeypatch, *common_args(data_dir, plain, **args))
    run_tokenizer_script(monkeypatch, *common_args(data_dir, checkpointed, gradient_checkpointing=True, **args))
    expected = load_file(plain / "diffusion_pytorch_model.safetensors")
    actual = load_file(checkpointed / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_size": 15}, "multiple of the tokenizer's downsampling factor"),
        ({"vq_config": '{"codebook_sise": 16}'}, "unknown keys"),
        ({"train_data": "/nonexistent/data.npz"}, "train_data"),
        ({"perceptual_weight": 1.0}, "perceptual_model"),
    ],
)
def test_tokenizer_bad_arguments_fail_fast(monkeypatch, tmp_path, data_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_tokenizer_script(monkeypatch, *common_args(data_dir, tmp_path / "out", max_steps=1, **overrides))


def test_tokenizer_refuses_a_non_empty_output_dir(monkeypatch, tmp_path, data_dir):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        run_tokenizer_script(monkeypatch, *common_args(data_dir, tmp_path, max_steps=1))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_decoder_only_keeps_every_token_id_and_trains_the_decoder(monkeypatch, tmp_path, data_dir):
    """`--train_decoder_only` with the GAN on: the encoder and codebook come back bit-identical (so the ids a MAGE
    was trained on do not change) while the decoder moves and its reconstruction loss falls."""
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    run_tokenizer_script(monkeypatch, *common_args(data_dir, base, max_steps=10))
    args = common_args(data_dir, tuned, max_steps=12, gan_weight=0.1, gan_start_step=0, discriminator_channels=8,
                       dead_code_restart_steps=2)
    args = [a for a in args if a != TINY_VQ and a != "--vq_config"]
    run_tokenizer_script(monkeypatch, *args, "--model_name_or_path", base, "--train_decoder_only", "true")
    before, after = load_file(base / "diffusion_pytorch_model.safetensors"), load_file(tuned / "diffusion_pytorch_model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        frozen = name.startswith(("encoder.", "quantize."))
        assert torch.equal(before[name], after[name]) == frozen, name
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(MageVQModel.from_pretrained(base).tokenize(images), MageVQModel.from_pretrained(tuned).tokenize(images))
    records = [r for r in read_log(tuned) if "l1" in r]
    assert records[-1]["l1"] < records[0]["l1"] and "gan_generator" in records[-1]


def test_decoder_only_needs_a_trained_tokenizer(monkeypatch, tmp_path, data_dir):
    with pytest.raises(ValueError, match="model_name_or_path"):
        run_tokenizer_script(monkeypatch, *common_args(data_dir, tmp_path / "out", max_steps=1, train_decoder_only="true"))


@pytest.mark.slow
def test_tokenizer_two_process_accelerate_launch(tmp_path, data_dir):
    import os
    import subprocess

    command = [
        shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate", "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--main_process_port", free_port(),
        "--mixed_precision", "no", "--dynamo_backend", "no", str(EXAMPLE),
        *common_args(data_dir, tmp_path / "ddp", max_train_samples=64, max_steps=4, per_device_train_batch_size=8,
                     save_steps=2, gan_weight=0.1, gan_start_step=2, dead_code_restart_steps=2, discriminator_channels=8),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert read_log(tmp_path / "ddp")[-1]["epoch"] == 1  # 64 images / (8 x 2 processes) = 4 steps per epoch
    assert MageVQModel.from_pretrained(tmp_path / "ddp").config.codebook_size == 32
