"""The benchmark scripts stay runnable: their quick modes run here (tiny shapes, seconds), the original-loop baseline
of `benchmarks/end_to_end.py` is checked against the original's own numbers, and the tables' target logic is
checked on known inputs."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS_DIR))  # the scripts import each other as siblings
bench = importlib.import_module("bench")
end_to_end = importlib.import_module("end_to_end")
gpu_check = importlib.import_module("gpu_check")

pytestmark = pytest.mark.usefixtures("single_thread")


def _eager_fixture_models(converted_original):
    from mage_hf import MageForMaskedImageModeling, MageVQModel

    folder = converted_original["pretraining"]
    transformer = MageForMaskedImageModeling.from_pretrained(folder, subfolder="transformer",
                                                             attn_implementation="eager").eval()
    return transformer, MageVQModel.from_pretrained(folder, subfolder="vqvae").eval()


@pytest.mark.parametrize("steps, key", [(12, "gen_unknown_per_step"), (20, "gen_unknown_per_step_20")])
def test_original_loop_baseline_follows_the_originals_mask_schedule(converted_original, reference_tensors, steps, key):
    transformer, vqvae = _eager_fixture_models(converted_original)
    mask_id = transformer.config.mask_token_id
    counts = []
    images, tokens = end_to_end.original_loop_generate(
        transformer, vqvae, batch_size=2, num_iter=steps, choice_temperature=6.0, seed=0,
        on_step=lambda step, ids: counts.append((ids == mask_id).sum(dim=1)),
    )
    expected = reference_tensors[key]
    assert torch.equal(torch.stack(counts), expected.unsqueeze(1).expand(-1, 2))
    # The sampled grid, not the re-masked one, is decoded, with the exact float32 decoder.
    assert tokens.shape == (2, transformer.config.num_tokens) and int(tokens.max()) < transformer.config.codebook_size
    with torch.no_grad():
        assert torch.equal(images, vqvae.decode_tokens(tokens))


def test_original_loop_baseline_is_deterministic_per_seed(converted_original):
    transformer, vqvae = _eager_fixture_models(converted_original)
    runs = [end_to_end.original_loop_generate(transformer, vqvae, 2, 4, 6.0, seed)[1] for seed in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_load_variants_gives_eager_baseline_and_bf16_pipeline(tmp_path):
    variants = end_to_end.load_variants(end_to_end.save_random_pipeline("tiny", tmp_path / "tiny"))
    transformer, vqvae = variants["original"]
    assert transformer.config._attn_implementation == "eager"
    assert transformer.dtype == torch.float32 and vqvae.dtype == torch.float32
    assert variants["bf16"].transformer.dtype == torch.bfloat16
    assert variants["fp32"].transformer.dtype == torch.float32


def _timed(key, seconds):
    item = end_to_end.Timed(key, run=None)
    item.seconds = list(seconds)
    return item


def test_end_to_end_rows_read_the_targets():
    work = {item.key: item for item in (
        _timed("gen/original", [9.0, 9.5]), _timed("gen/fp32", [8.0, 8.1]), _timed("gen/bf16", [2.0, 2.5]),
        _timed("cli/generate", [3.0, 2.9]), _timed("cli/help", [0.2, 0.3]),
    )}
    accuracy = dict(first_step_agreement=0.98, half_masked_agreement=0.97, bf16_decode_psnr=45.0,
                    bf16_decode_path="fast decode (bfloat16)")
    rows = end_to_end.build_rows(work, accuracy, "ViT-B", 20, 12, 16)
    by_variant = {row["variant"]: row for row in rows if row["variant"] != "subprocess"}
    fp32, bf16 = by_variant["`MagePipeline` fp32"], by_variant["`MagePipeline` `torch_dtype=torch.bfloat16`"]
    # Ratios are min over min: 9.0 / 8.0 misses 1.15x, 9.0 / 2.0 meets 3.5x.
    assert fp32["result"].startswith("1.12x") and fp32["status"].startswith("missed")
    assert bf16["result"].startswith("4.50x") and bf16["status"] == "met"
    assert by_variant["all-masked grid (first step)"]["status"] == "missed (99.0% of target)"  # 98% < 99%
    assert by_variant["half-masked grid"]["status"] == ""  # information only
    assert by_variant["fast decode (bfloat16)"]["status"] == "met"  # 45 dB >= 40 dB
    # The command line against its time bounds, from the minimum: 2.9 s > 2.5 s, 0.2 s <= 0.5 s.
    assert [row["status"] for row in rows if row["variant"] == "subprocess"] == ["missed by 0.40 s", "met"]


def test_end_to_end_quick_run_prints_every_row(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert end_to_end.main(["--quick", "--threads", "1", "--skip-cli", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    for text in ("original-loop baseline", "`MagePipeline` fp32", "torch.bfloat16", "token agreement", "dB PSNR",
                 "default model, `pipe(...)` call"):
        assert text in table
    rows = json.loads(out.read_text())["rows"]
    timed = [row for row in rows if "min_s" in row]
    assert len(timed) == 5 and all(row["min_s"] > 0 for row in timed)  # 3 generation variants + default 1, 2
    assert all(row["status"] for row in rows if row["target"] and row["target"] != "(info)")


def test_cli_rows_time_the_console_script(tmp_path, monkeypatch):
    help_row = next(item for item in end_to_end.cli_work(tmp_path, 1, steps=1) if item.key == "cli/help")
    help_row.once()
    assert help_row.error is None and len(help_row.seconds) == 1 and help_row.seconds[0] > 0
    # A command that fails is an error in its row, not a time.
    monkeypatch.setattr(end_to_end, "cli_command", lambda: [sys.executable, "-c", "raise SystemExit(3)"])
    failing = next(item for item in end_to_end.cli_work(tmp_path, 1, steps=1) if item.key == "cli/help")
    failing.once()
    assert failing.error.startswith("RuntimeError: exit code 3") and failing.seconds == []


@pytest.mark.parametrize("sections", [["peak", "parity", "variants"], ["sampling", "training"]])
def test_gpu_check_quick_runs_on_cpu(tmp_path, capsys, sections):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--quick", "--device", "cpu", "--sections", *sections, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| section | check |" in table
    rows = json.loads(out.read_text())["rows"]
    assert {row["section"] for row in rows} == set(sections) | ({"peak"} if "sampling" in sections else set())
    assert not [row for row in rows if row["status"] == "error" or row["result"].startswith(("error", "skipped"))]
    if "parity" in sections:  # CPU against CPU: the converted fixture must agree exactly with itself
        parity = [row for row in rows if row["section"] == "parity" and row["target"] == "100%"]
        assert parity and all(row["status"] == "met" for row in parity)
    if "sampling" in sections:
        assert all("% of bf16 peak" in row["result"] for row in rows if row["section"] == "sampling")
        assert math.isfinite(json.loads(out.read_text())["rates"]["bf16"])


def test_gpu_check_time_budget_skips_what_is_left(capsys):
    assert gpu_check.main(["--quick", "--device", "cpu", "--budget-s", "0", "--sections", "peak", "training"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith(("| peak", "| training"))]
    assert rows and all("skipped: time budget" in line for line in rows)


def test_gpu_check_shell_wrapper_runs(tmp_path):
    out = tmp_path / "peak.json"
    command = [str(BENCHMARKS_DIR / "gpu_check.sh"), "--quick", "--device", "cpu", "--sections", "peak",
               "--json", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHON": sys.executable})
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert [row["variant"] for row in json.loads(out.read_text())["rows"]] == ["bf16", "fp32"]


def test_bench_reads_the_projects_own_fixtures_and_images(fixture_dir, fashion_mnist_path):
    assert bench.FIXTURE_DIR == fixture_dir and bench.SAMPLE_IMAGES_FILE == fashion_mnist_path
    images = bench.sample_images(4, 32, "cpu")
    assert images.shape == (4, 3, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    # Fashion-MNIST: grey (equal channels) on a black background, unlike the uniform-noise fallback.
    assert torch.equal(images[:, 0], images[:, 1]) and (images == 0).float().mean() > 0.2


def test_bench_bf16_weights_keep_the_tokenizer_exact():
    """The `bf16-weights` rows model what `from_pretrained(dtype=torch.bfloat16)` loads: the built-in VQ tokenizer
    stays float32 with its exact weights, so token ids do not change."""
    import copy

    _, transformer = bench.build_models("tiny", "cpu")
    fast = bench.to_bf16_weights(copy.deepcopy(transformer))
    assert fast.mage.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    exact = transformer.mage.vqvae.state_dict()
    assert all(torch.equal(value, exact[key]) for key, value in fast.mage.vqvae.state_dict().items())
    pixels = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fast.mage.tokenize(pixels), transformer.mage.tokenize(pixels))
