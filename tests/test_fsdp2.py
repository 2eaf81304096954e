"""MAGE under PyTorch FSDP2 (`fully_shard`) on 2 CPU processes (gloo): the same training as DDP, a full state dict
that `from_pretrained` loads, and the wrapping that `examples/accelerate_fsdp.yaml` gives (tests/fsdp2_worker.py
runs the processes; each launch takes ~10 s).

Tolerances: both runs start from the same weights and see the same batches, dropout draws and masks, so they may
differ only in how float32 sums are ordered (gradient averaging over the 2 processes, the clipping norm summed over
shards): a few ulps. Losses are compared at rtol 1e-6 (~8 float32 ulps), parameters at atol 1e-6 (weights are
O(0.01-1)); on this machine both come out bit-identical.
"""

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

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline
from mage_hf.training.fsdp import shard_mage_model

from conftest import EXAMPLES_DIR, free_port, tiny_config_kwargs
from test_examples_pretrain import logged_losses, model_config_file, pretrain_args, vqvae_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("single_thread")

WORKER = Path(__file__).resolve().parent / "fsdp2_worker.py"
CPU_FSDP_SHIM = Path(__file__).resolve().parent / "fsdp2_accelerate_cpu.py"
FSDP_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "accelerate_fsdp.yaml"
NUM_PROCESSES = 2
STEPS = 4
LOSS_RTOL = 1e-6
PARAMETER_ATOL = 1e-6
# tiny config: 2 encoder + 1 decoder MageLayer
BLOCK_UNITS = ["mage.encoder.layers.0", "mage.encoder.layers.1", "decoder.blocks.layers.0"]


def launch_worker(output_dir: Path, *args, env: dict | None = None) -> list[dict]:
    """Run tests/fsdp2_worker.py on 2 processes; returns each rank's report."""
    output_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(NUM_PROCESSES),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(WORKER), "--output_dir", str(output_dir), "--steps", str(STEPS), *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in range(NUM_PROCESSES)]


def accelerate_fsdp_environment(config_file: Path) -> dict[str, str]:
    """The `FSDP_*` / `ACCELERATE_USE_FSDP` variables `accelerate launch --config_file <config_file>` gives each
    process (computed by Accelerate's own launcher code, so the test follows the yaml)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), str(WORKER)])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return {key: value for key, value in env.items() if key.startswith("FSDP_") or key == "ACCELERATE_USE_FSDP"}


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """FSDP2 via `shard_mage_model` vs DDP, 4 AdamW steps."""
    output = tmp_path_factory.mktemp("fsdp2")
    return output, launch_worker(output, "--wrapping", "mage")


def assert_same_training(reports: list[dict]) -> None:
    for report in reports:
        assert len(report["fsdp_losses"]) == STEPS
        np.testing.assert_allclose(report["fsdp_losses"], report["ddp_losses"], rtol=LOSS_RTOL, atol=0)
        assert report["max_parameter_difference"] <= PARAMETER_ATOL
    # the processes saw different batches: a curve that is not per-process would not tell them apart
    assert reports[0]["ddp_losses"] != reports[1]["ddp_losses"]


def test_fsdp2_loss_curve_equals_ddp(fsdp_run):
    _, reports = fsdp_run
    assert [r["world_size"] for r in reports] == [NUM_PROCESSES] * NUM_PROCESSES
    assert_same_training(reports)
    assert reports[0]["ddp_losses"][-1] < reports[0]["ddp_losses"][0]  # it trained


def test_embedding_and_blocks_are_sharded_and_the_embedding_trains_as_under_ddp(fsdp_run):
    _, reports = fsdp_run
    config = MageConfig(**tiny_config_kwargs())
    for report in reports:
        assert report["units"] == ["<root>", "mage.embeddings.word_embeddings", *BLOCK_UNITS[:2], "mage.vqvae",
                                   BLOCK_UNITS[2]]
        # the MLM head reads the matrix while it is sharded on every process (dim 0 split in two)
        assert report["embedding_is_dtensor"] and report["embedding_placements"] == ["S(0)"]
        assert report["embedding_full_shape"] == [config.vocab_size, config.hidden_size]
        assert report["embedding_local_shape"] == [config.vocab_size // NUM_PROCESSES, config.hidden_size]
        assert report["embedding_update"] > 1e-3  # trained (through the input lookup) ...
        assert report["embedding_difference"] <= PARAMETER_ATOL  # ... exactly as under DDP


def test_frozen_tokenizer_is_sharded_and_stays_frozen(fsdp_run):
    _, reports = fsdp_run
    for report in reports:
        assert report["vq_all_dtensor"] and not report["vq_any_trainable"]
        assert report["vq_unchanged"]


def test_full_state_dict_loads_with_from_pretrained_and_gives_ddp_logits(fsdp_run):
    output, reports = fsdp_run
    assert reports[0]["state_dict_size"] > 0 and reports[1]["state_dict_size"] == 0  # gathered on rank 0 only
    model, info = MageForMaskedImageModeling.from_pretrained(output / "fsdp_model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert len(load_file(output / "fsdp_model" / "model.safetensors")) == len(model.state_dict())
    assert not any(p.requires_grad for p in model.mage.vqvae.parameters())
    reference = load_file(output / "reference.safetensors")
    with torch.no_grad():
        logits = model.eval()(pixel_values=reference["pixel_values"], noise=reference["noise"], mask_ratio=0.75).logits
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-5, atol=1e-5)


def test_sharded_save_writes_the_mage_code_not_torchs_wrapper(fsdp_run, tmp_path):
    # `fully_shard` turns the model into a `FSDPMageForMaskedImageModeling` defined inside torch: the folder must
    # still carry mage-hf's code files and `auto_map`, as an unsharded save does.
    output, _ = fsdp_run
    MageForMaskedImageModeling(MageConfig(**tiny_config_kwargs())).save_pretrained(tmp_path / "plain")
    def files(folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    assert files(output / "fsdp_model") == files(tmp_path / "plain")
    saved = json.loads((output / "fsdp_model" / "config.json").read_text())
    plain = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert saved["auto_map"] == plain["auto_map"]
    assert saved["architectures"] == ["MageForMaskedImageModeling"]


def test_accelerate_fsdp_config_wraps_and_trains_like_ddp(tmp_path):
    # Accelerate runs FSDP only on GPUs; its own FSDP2 preparation (`fsdp2_prepare_model`) does run on CPU, so the
    # worker applies it with the settings `accelerate launch --config_file examples/accelerate_fsdp.yaml` sets.
    env = accelerate_fsdp_environment(FSDP_CONFIG)
    assert env["FSDP_VERSION"] == "2" and env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "MageLayer"
    reports = launch_worker(tmp_path, "--wrapping", "accelerate", env=env)
    assert_same_training(reports)
    for report in reports:
        # the blocks and the token embedding as `shard_mage_model` makes them, + Accelerate's "final norm" unit;
        # the tokenizer is ignored (`fsdp_ignored_modules`): replicated, float32, frozen
        assert sorted(report["units"]) == sorted(["<root>", "mage.embeddings.word_embeddings", "mage.fc_norm",
                                                  *BLOCK_UNITS])
        assert report["embedding_is_dtensor"] and report["embedding_difference"] <= PARAMETER_ATOL
        assert not report["vq_all_dtensor"] and not report["vq_any_trainable"] and report["vq_unchanged"]
    model, info = MageForMaskedImageModeling.from_pretrained(tmp_path / "fsdp_model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_word_embedding_matrix_is_the_detached_weight(tiny_config):
    model = MageForMaskedImageModeling(tiny_config)
    matrix = model.mage.embeddings.word_embedding_matrix()
    assert torch.equal(matrix, model.mage.embeddings.word_embeddings.weight) and not matrix.requires_grad


def test_shard_mage_model_rejects_other_modules():
    with pytest.raises(TypeError, match="MagePreTrainedModel"):
        shard_mage_model(torch.nn.Linear(2, 2))


def run_pretrain_on_two_processes(output_dir: Path, args: list, fsdp_env: dict | None = None) -> None:
    """`examples/pretrain.py` on 2 CPU processes under torchrun: DDP, or (with `fsdp_env`) Accelerate's FSDP2
    path through tests/fsdp2_accelerate_cpu.py."""
    script = [str(EXAMPLES_DIR / "pretrain.py")]
    if fsdp_env:
        script.insert(0, str(CPU_FSDP_SHIM))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(NUM_PROCESSES),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *script, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1",
           "ACCELERATE_MIXED_PRECISION": "no", **(fsdp_env or {})}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


@pytest.mark.slow
def test_pretrain_under_the_fsdp_config_equals_ddp_and_resumes(tmp_path, data_dir, vqvae_dir, model_config_file):
    # Unchanged pretrain.py + Trainer + Accelerate's FSDP2 code (wrapping, clipping, FULL_STATE_DICT checkpoints
    # and final save, resume); warm-up 1 step, so steps 2 and 3 update the weights.
    args = dict(max_steps=3, warmup_steps=1, save_strategy="steps", save_steps=2)
    fsdp_env = accelerate_fsdp_environment(FSDP_CONFIG)
    fsdp, ddp, resumed = tmp_path / "fsdp", tmp_path / "ddp", tmp_path / "resumed"
    run_pretrain_on_two_processes(fsdp, pretrain_args(data_dir, vqvae_dir, model_config_file, fsdp, **args), fsdp_env)
    run_pretrain_on_two_processes(ddp, pretrain_args(data_dir, vqvae_dir, model_config_file, ddp, **args))
    assert len(logged_losses(fsdp)) == 3
    np.testing.assert_allclose(logged_losses(fsdp), logged_losses(ddp), rtol=LOSS_RTOL, atol=0)
    expected = load_file(ddp / "transformer" / "model.safetensors")
    actual = load_file(fsdp / "transformer" / "model.safetensors")
    assert sorted(actual) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=PARAMETER_ATOL)
    # a checkpoint is an ordinary folder: mage-hf's code files, no torch wrapper module
    checkpoint = {p.name for p in (fsdp / "checkpoint-2").iterdir()}
    assert {"model.safetensors", "modeling_mage.py", "pytorch_model_fsdp.bin"} <= checkpoint
    assert not list((fsdp / "checkpoint-2").glob("_fsdp*.py"))
    resumed.mkdir()
    shutil.copytree(fsdp / "checkpoint-2", resumed / "checkpoint-2")
    run_pretrain_on_two_processes(resumed, pretrain_args(data_dir, vqvae_dir, model_config_file, resumed,
                                                         resume_from_checkpoint="latest", **args), fsdp_env)
    np.testing.assert_allclose(logged_losses(resumed), logged_losses(fsdp), rtol=LOSS_RTOL, atol=0)
    resumed_weights = load_file(resumed / "transformer" / "model.safetensors")
    for name in actual:
        torch.testing.assert_close(resumed_weights[name], actual[name], rtol=0, atol=PARAMETER_ATOL)
    pipeline = MagePipeline.from_pretrained(fsdp)
    images = pipeline(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (1, 16, 16, 3)
