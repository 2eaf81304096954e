"""bf16 autocast training on CPU: `examples/pretrain.py --bf16` and `examples/train_tokenizer.py --mixed_precision
bf16` train with float32 master weights, write float32 folders, resume exactly, and leave no precision behind for
the next in-process run; `benchmarks/training_precision.py --quick` runs."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mage_hf import MageForMaskedImageModeling, MagePipeline, MageVQModel
from mage_hf.training import vq_training

from conftest import REPO_ROOT, run_example, tiny_config_kwargs
from test_examples_pretrain import model_config_file, vqvae_dir  # noqa: F401  (pytest fixtures, shared)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_VQ_JSON = json.dumps(tiny_config_kwargs()["vqvae_config"])


@pytest.fixture
def forward_precision(monkeypatch):
    """Records, for every training forward of `cls`, (autocast on?, autocast dtype, parameter dtypes)."""

    def install(cls):
        records = []
        original = cls.forward

        def forward(self, *args, **kwargs):
            records.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                            {p.dtype for p in self.parameters()}))
            out = original(self, *args, **kwargs)
            logits = getattr(out, "logits", None)
            if logits is not None:
                records[-1] += (logits.dtype, out.loss.dtype)
            return out

        monkeypatch.setattr(cls, "forward", forward)
        return records

    return install


def pretrain_flags(data_dir, vqvae_dir, config_file, output_dir, *extra) -> list:
    """Tiny pre-training on the tests' Fashion-MNIST subset; no `--use_cpu` (a CPU-only machine needs none)."""
    return ["--vqvae", vqvae_dir, "--model_config", config_file, "--train_data", data_dir / "fashion_mnist_5k.npz",
            "--output_dir", output_dir, "--per_device_train_batch_size", 16, "--learning_rate", 3e-3,
            "--base_learning_rate", 0, "--warmup_steps", 2, "--disable_tqdm", "true", "--seed", 0,
            "--report_to", "none", *extra]


def logged(output_dir: Path, key: str = "loss") -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if key in entry]


@pytest.mark.skipif(torch.accelerator.is_available(), reason="checks the CPU-only path (no accelerator)")
def test_pretrain_bf16_on_cpu_trains_under_autocast_and_writes_a_float32_pipeline(
        monkeypatch, tmp_path, data_dir, vqvae_dir, model_config_file, forward_precision):
    records = forward_precision(MageForMaskedImageModeling)
    output = tmp_path / "run"
    run_example(monkeypatch, "pretrain", *pretrain_flags(data_dir, vqvae_dir, model_config_file, output, "--bf16",
                                                         "--max_train_samples", 256, "--max_steps", 30,
                                                         "--logging_steps", 5, "--save_strategy", "no"))
    # The forward ran under bf16 autocast with float32 weights (the master copy), and returned float32 logits/loss.
    assert records and all(r[:2] == (True, torch.bfloat16) for r in records)
    assert all(r[2] == {torch.float32} and r[3] == torch.float32 and r[4] == torch.float32 for r in records)
    losses = logged(output)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0] - 0.05, losses
    pipe = MagePipeline.from_pretrained(output)
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.vqvae.parameters()} == {torch.float32}
    # The tokenizer inside the transformer is the --vqvae one, unchanged by bf16 training.
    saved = load_file(str(vqvae_dir / "diffusion_pytorch_model.safetensors"))
    tokenizer = pipe.transformer.mage.vqvae.state_dict()
    assert all(torch.equal(tokenizer[k], v) for k, v in saved.items() if k in tokenizer)


def test_pretrain_bf16_resume_matches_the_uninterrupted_run(monkeypatch, tmp_path, data_dir, vqvae_dir,
                                                           model_config_file):
    common = ["--bf16", "--use_cpu", "true", "--max_train_samples", 64, "--max_steps", 4, "--logging_steps", 1,
              "--save_strategy", "steps", "--save_steps", 2]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_example(monkeypatch, "pretrain", *pretrain_flags(data_dir, vqvae_dir, model_config_file, full, *common))
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    run_example(monkeypatch, "pretrain", *pretrain_flags(data_dir, vqvae_dir, model_config_file, resumed, *common,
                                                         "--resume_from_checkpoint", "latest"))
    assert logged(resumed)[-2:] == logged(full)[-2:]
    first = load_file(str(full / "transformer" / "model.safetensors"))
    second = load_file(str(resumed / "transformer" / "model.safetensors"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def tokenizer_flags(data_dir, output_dir, *extra) -> list:
    return ["--train_data", data_dir / "fashion_mnist_5k.npz", "--image_size", 16, "--vq_config", TINY_VQ_JSON,
            "--output_dir", output_dir, "--per_device_train_batch_size", 16, "--logging_steps", 5,
            "--save_steps", 1000, "--gan_weight", 0, "--learning_rate", 2e-3, "--seed", 0, *extra]


def train_log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def test_tokenizer_bf16_on_cpu_trains_under_autocast_and_writes_a_float32_model(monkeypatch, tmp_path, data_dir,
                                                                               forward_precision):
    records = forward_precision(vq_training.VQTrainingModule)
    output = tmp_path / "vq"
    run_example(monkeypatch, "train_tokenizer", *tokenizer_flags(data_dir, output, "--mixed_precision", "bf16",
                                                                 "--max_train_samples", 256, "--max_steps", 30))
    assert records and all(r[:2] == (True, torch.bfloat16) and r[2] == {torch.float32} for r in records)
    losses = [record["loss"] for record in train_log(output) if "loss" in record]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] * 0.9
    vqvae = MageVQModel.from_pretrained(output)
    assert {p.dtype for p in vqvae.parameters()} == {torch.float32}


def test_tokenizer_precision_does_not_leak_into_the_next_in_process_run(monkeypatch, tmp_path, data_dir,
                                                                        forward_precision):
    records = forward_precision(vq_training.VQTrainingModule)
    short = ["--max_train_samples", 32, "--max_steps", 1]
    run_example(monkeypatch, "train_tokenizer", *tokenizer_flags(data_dir, tmp_path / "a", "--mixed_precision", "bf16",
                                                                 *short))
    assert records[-1][0]
    # The default (float32) run after it must not inherit bf16 from Accelerate's process-wide state ...
    run_example(monkeypatch, "train_tokenizer", *tokenizer_flags(data_dir, tmp_path / "b", *short))
    assert not records[-1][0]
    # ... and an explicit float32 run must not be refused.
    run_example(monkeypatch, "train_tokenizer", *tokenizer_flags(data_dir, tmp_path / "c", "--mixed_precision", "bf16",
                                                                 *short))
    run_example(monkeypatch, "train_tokenizer", *tokenizer_flags(data_dir, tmp_path / "d", "--mixed_precision", "no",
                                                                 *short))
    assert not records[-1][0]


def test_tokenizer_rejects_an_unknown_mixed_precision(monkeypatch, tmp_path, data_dir):
    with pytest.raises(ValueError, match="mixed_precision"):
        run_example(monkeypatch, "train_tokenizer", *tokenizer_flags(data_dir, tmp_path / "vq", "--mixed_precision",
                                                                     "bfloat16", "--max_steps", 1))


def test_training_precision_benchmark_quick_mode_runs(capsys):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        benchmark = importlib.import_module("training_precision")
    finally:
        sys.path.pop(0)
    result = benchmark.main(["--quick", "--threads", "1", "--rounds", "1"])
    assert [row["work"] for row in result["rows"]] == ["tiny pretrain (tokens)", "tiny pretrain (pixels)",
                                                       "tiny tokenizer"]
    assert all(row["fp32_s"] > 0 and row["bf16_s"] > 0 for row in result["rows"])
    assert "| bf16 s/step |" in capsys.readouterr().out


def test_curve_comparison_separates_a_small_difference_from_noise(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        benchmark = importlib.import_module("training_precision")
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    steps = np.arange(100)
    reference = (6.0 - 0.005 * steps + 0.02 * rng.standard_normal(100)).tolist()
    close = [value + 1e-4 for value in reference]
    other_seed = (6.0 - 0.005 * steps + 0.02 * rng.standard_normal(100)).tolist()
    bf16 = benchmark.curve_stats(reference, close, skip=10, window=10)
    noise = benchmark.curve_stats(reference, other_seed, skip=10, window=10)
    assert bf16["mean_abs_step"] == pytest.approx(1e-4, rel=1e-3) and bf16["mean_step"] == pytest.approx(1e-4, rel=1e-3)
    assert noise["mean_abs_step"] > 100 * bf16["mean_abs_step"]
    runs = {name: {"losses": losses, "steps_per_second": 1.0}
            for name, losses in (("fp32 seed 0", reference), ("bf16 seed 0", close), ("fp32 seed 1", other_seed))}
    result = {"steps": 100, "window": 10, "skip": 10, "runs": runs, "bf16_vs_fp32": bf16, "seed_vs_seed": noise,
              "within_run_std": 0.02}
    assert "| bf16 vs fp32 (same seed) | 0.0001 |" in benchmark.curves_table(result)
    benchmark.save_plot(result, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
