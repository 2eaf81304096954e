"""`mage-hf` with bad input and faults: one line on stderr with exit status 2 and no traceback for every error;
mismatched weights refused unless allowed; unreadable images named or skipped; constant memory for many images;
masks of another size; 16-bit images; outpainting that extends the canvas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from test_cli import model_dir  # noqa: F401  (a pytest fixture: the tiny pipeline folder)

from mage_hf import MageForImageClassification, MageModel, MagePipeline, cli


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def run(*argv: str) -> None:
    assert cli.main(list(argv)) == 0


def one_line_error(capsys, *argv: str) -> str:
    """Run the CLI in-process expecting a user error: exit 2 and exactly one line on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def subprocess_error(*argv: str) -> str:
    """The same in a fresh interpreter, where every library's own logging reaches stderr."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "mage_hf.cli", *argv], capture_output=True, text=True,
                            timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------ numeric options
@pytest.mark.parametrize("argv, option", [
    (["generate", "--batch-size", "0"], "--batch-size"),
    (["generate", "--num-images", "0"], "--num-images"),
    (["generate", "--num-images", "-3"], "--num-images"),
    (["generate", "--num-images", "many"], "--num-images"),
    (["generate", "--steps", "0"], "--steps"),
    (["generate", "--guidance-scale", "inf"], "--guidance-scale"),
    (["generate", "--guidance-scale", "nan"], "--guidance-scale"),
    (["generate", "--guidance-scale", "-1"], "--guidance-scale"),
    (["generate", "--choice-temperature", "-0.5"], "--choice-temperature"),
    (["generate", "--seed", "-1"], "--seed"),
    (["embed", "--images", "x.png", "--batch-size", "0"], "--batch-size"),
    (["inpaint", "--image", "x.png", "--strength", "1.5"], "--strength"),
    (["inpaint", "--image", "x.png", "--outpaint", "8", "0", "-8", "0"], "--outpaint"),
])
def test_bad_numbers_are_one_line(capsys, tmp_path, argv, option):
    line = one_line_error(capsys, *argv, "--out", str(tmp_path / "out.png"))
    assert option in line and "expected" in line


def test_seed_range_over_all_images(model_dir, tmp_path, capsys):
    line = one_line_error(capsys, "generate", "--model", str(model_dir), "--seed", str(cli.MAX_SEED),
                          "--num-images", "2", "--out", str(tmp_path / "x"))
    assert "--seed" in line


# ------------------------------------------------------------------------------------------ devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(model_dir, tmp_path):
    line = subprocess_error("generate", "--model", str(model_dir), "--device", "cuda", "--out", str(tmp_path / "x.png"))
    assert "--device cuda" in line and "CUDA is not available" in line


def test_unknown_device(model_dir, tmp_path, capsys):
    line = one_line_error(capsys, "generate", "--model", str(model_dir), "--device", "gpu0", "--out",
                          str(tmp_path / "x.png"))
    assert "--device gpu0" in line


# ------------------------------------------------------------------------------------------ weights
def mismatched_copy(model_dir: Path, tmp_path: Path, layers_delta: int) -> Path:
    folder = tmp_path / f"mismatched{layers_delta:+d}"
    shutil.copytree(model_dir, folder)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_hidden_layers"] += layers_delta
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("layers_delta", [-1, 1])
def test_mismatched_weights_refused_unless_allowed(model_dir, tmp_path, capsys, layers_delta):
    folder = mismatched_copy(model_dir, tmp_path, layers_delta)
    line = one_line_error(capsys, "generate", "--model", str(folder), "--steps", "2", "--out", str(tmp_path / "a.png"))
    assert "--allow-mismatched-weights" in line and "transformer" in line
    run("generate", "--model", str(folder), "--steps", "2", "--allow-mismatched-weights", "--out",
        str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").is_file()


def test_mismatched_weights_refused_by_embed(model_dir, images_dir, tmp_path, capsys):
    folder = mismatched_copy(model_dir, tmp_path, 1)
    for model in (folder, folder / "transformer"):
        line = one_line_error(capsys, "embed", "--model", str(model), "--images", str(images_dir), "--out",
                              str(tmp_path / "f.npy"))
        assert "missing" in line and "--allow-mismatched-weights" in line
    run("embed", "--model", str(folder), "--images", str(images_dir), "--allow-mismatched-weights", "--out",
        str(tmp_path / "f.npy"))


def test_mismatched_weights_one_line_in_a_fresh_process(model_dir, tmp_path):
    """No load report table from transformers/diffusers before the refusal."""
    folder = mismatched_copy(model_dir, tmp_path, -1)
    line = subprocess_error("generate", "--model", str(folder), "--out", str(tmp_path / "b.png"))
    assert "--allow-mismatched-weights" in line


def test_truncated_safetensors_named(model_dir, images_dir, tmp_path, capsys):
    folder = tmp_path / "truncated"
    shutil.copytree(model_dir, folder)
    weights = folder / "transformer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    line = one_line_error(capsys, "generate", "--model", str(folder), "--out", str(tmp_path / "c.png"))
    assert str(weights) in line
    line = one_line_error(capsys, "embed", "--model", str(folder), "--images", str(images_dir), "--out",
                          str(tmp_path / "f.npy"))
    assert str(weights) in line


def test_not_a_mage_checkpoint_is_one_line(tmp_path, capsys):
    checkpoint = tmp_path / "random.pth"
    torch.save({"model": {"backbone.weight": torch.zeros(2)}}, checkpoint)
    line = one_line_error(capsys, "convert", "--checkpoint", str(checkpoint), "--model", "mage_vit_base_patch16",
                          "--output", str(tmp_path / "out"))
    assert str(checkpoint) in line and "not a MAGE checkpoint" in line


def test_unexpected_failure_is_one_line(model_dir, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke\nwith a second line")

    monkeypatch.setattr(MagePipeline, "__call__", broken)
    line = one_line_error(capsys, "generate", "--model", str(model_dir), "--out", str(tmp_path / "d.png"))
    assert "RuntimeError: something inside broke with a second line" in line and "--log-level DEBUG" in line


# ------------------------------------------------------------------------------------------ images
def test_decompression_bomb_named(model_dir, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("1", (15000, 15000)).save(bomb)
    line = one_line_error(capsys, "inpaint", "--model", str(model_dir), "--image", str(bomb), "--strength", "0.5",
                          "--out", str(tmp_path / "e.png"))
    assert "--image" in line and str(bomb) in line and "pixels" in line
    folder = tmp_path / "with_bomb"
    folder.mkdir()
    shutil.copy(bomb, folder / "bomb.png")
    line = one_line_error(capsys, "embed", "--model", str(model_dir), "--images", str(folder), "--out",
                          str(tmp_path / "f.npy"))
    assert str(folder / "bomb.png") in line and "--skip-unreadable" in line


def test_embed_names_or_skips_unreadable_files(model_dir, images_dir, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(images_dir, folder)
    (folder / "img1b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "img9_truncated.png").write_bytes((images_dir / "img0.png").read_bytes()[:60])
    line = one_line_error(capsys, "embed", "--model", str(model_dir), "--images", str(folder), "--out",
                          str(tmp_path / "f.npy"))
    assert "img1b_corrupt.png" in line and "--skip-unreadable" in line
    assert not (tmp_path / "f.npy").exists()

    capsys.readouterr()
    run("embed", "--model", str(model_dir), "--images", str(folder), "--batch-size", "2", "--skip-unreadable",
        "--out", str(tmp_path / "f.npy"))
    out = capsys.readouterr().out
    assert "skipped 2 unreadable file(s)" in out and "img9_truncated.png" in out
    features = np.load(tmp_path / "f.npy")
    names = (tmp_path / "f.files.txt").read_text().splitlines()
    assert [Path(n).name for n in names] == ["img0.png", "img1.png", "img2.png"] and features.shape[0] == 3

    run("embed", "--model", str(model_dir), "--images", str(folder), "--skip-unreadable", "--out",
        str(tmp_path / "f.safetensors"))
    with safe_open(str(tmp_path / "f.safetensors"), "np") as handle:
        np.testing.assert_allclose(handle.get_tensor("features"), features, rtol=1e-5, atol=1e-6)
        assert len(json.loads(handle.metadata()["skipped"])) == 2
        assert [Path(n).name for n in json.loads(handle.metadata()["files"])] == ["img0.png", "img1.png", "img2.png"]


def copy_encoder_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Every tensor of `target` from `source` (which may hold norms that `target`'s head does not use)."""
    missing, _ = target.load_state_dict(source.state_dict(), strict=False)
    assert not missing


def test_embed_accepts_every_folder_holding_a_mage_model(model_dir, images_dir, tmp_path):
    pipe = MagePipeline.from_pretrained(model_dir)
    encoder = MageModel(pipe.transformer.config)
    copy_encoder_weights(pipe.transformer.mage, encoder)
    encoder.save_pretrained(tmp_path / "encoder")
    pipe.transformer.save_pretrained(tmp_path / "masked_image_modeling")
    classifier = MageForImageClassification(pipe.transformer.config)
    copy_encoder_weights(pipe.transformer.mage, classifier.mage)
    classifier.save_pretrained(tmp_path / "classifier")
    folders = [model_dir, model_dir / "transformer", tmp_path / "encoder", tmp_path / "masked_image_modeling",
               tmp_path / "classifier"]
    results = []
    for i, folder in enumerate(folders):
        out = tmp_path / f"features{i}.npy"
        run("embed", "--model", str(folder), "--images", str(images_dir), "--out", str(out))
        results.append(np.load(out))
    for features in results[1:]:
        np.testing.assert_allclose(features, results[0], rtol=1e-5, atol=1e-6)


def test_sixteen_bit_png_maps_like_its_eight_bit_twin(model_dir, tmp_path):
    rng = np.random.default_rng(1)
    grey8 = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    PIL.Image.fromarray(grey8, mode="L").save(tmp_path / "eight.png")
    PIL.Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert PIL.Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    np.testing.assert_allclose(cli._read_image(str(tmp_path / "sixteen.png"), "--image"),
                               np.repeat(grey8[..., None], 3, -1) / 255.0, atol=1e-6)
    for name in ("eight", "sixteen"):
        run("embed", "--model", str(model_dir), "--images", str(tmp_path / f"{name}.png"), "--out",
            str(tmp_path / f"{name}.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "sixteen.npy"), np.load(tmp_path / "eight.npy"), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ many images
def test_huge_grid_refused_up_front(model_dir, tmp_path, capsys):
    line = one_line_error(capsys, "generate", "--model", str(model_dir), "--num-images", "100000000", "--out",
                          str(tmp_path / "grid.png"))
    assert f"at most {cli.MAX_GRID_IMAGES}" in line and "--num-images" in line


def test_folder_plan_takes_constant_memory(tmp_path):
    tracemalloc.start()
    try:
        writer = cli.ImageWriter(tmp_path / "many", 100_000_000, overwrite=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert writer.width == 8 and peak < 1_000_000


def test_folder_output_is_written_batch_by_batch(model_dir, tmp_path, monkeypatch):
    folder = tmp_path / "stream"
    seen = []
    original = MagePipeline.__call__

    def counting(self, *args, **kwargs):
        seen.append(len(list(folder.glob("*.png"))) if folder.exists() else 0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MagePipeline, "__call__", counting)
    run("generate", "--model", str(model_dir), "--num-images", "5", "--batch-size", "2", "--steps", "2",
        "--out", str(folder))
    assert seen == [0, 2, 4] and len(list(folder.glob("*.png"))) == 5
    assert not list(folder.glob(".*"))  # no partial files left


def test_existing_outputs_found_without_listing_every_name(model_dir, tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "00000003.png").write_bytes(b"keep me")
    (folder / "notes.txt").write_text("unrelated")
    line = one_line_error(capsys, "generate", "--model", str(model_dir), "--num-images", "100000000", "--out",
                          str(folder))
    assert "00000003.png" in line and "--overwrite" in line
    assert (folder / "00000003.png").read_bytes() == b"keep me"


# ------------------------------------------------------------------------------------------ inpaint, outpaint
def test_resize_accepts_a_mask_of_another_size(model_dir, tmp_path):
    rng = np.random.default_rng(2)
    PIL.Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[:, 6:] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    run("inpaint", "--model", str(model_dir), "--image", str(tmp_path / "photo.png"), "--mask",
        str(tmp_path / "mask.png"), "--resize", "--steps", "2", "--out", str(tmp_path / "filled.png"))
    assert PIL.Image.open(tmp_path / "filled.png").size == (16, 16)


def test_mask_threshold_is_128(model_dir, tmp_path):
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    PIL.Image.fromarray(image).save(tmp_path / "image.png")
    mask = np.full((16, 16), 127, dtype=np.uint8)
    mask[:, 8:] = 128
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    run("inpaint", "--model", str(model_dir), "--image", str(tmp_path / "image.png"), "--mask",
        str(tmp_path / "mask.png"), "--blend", "--steps", "2", "--out", str(tmp_path / "out.png"))
    result = np.asarray(PIL.Image.open(tmp_path / "out.png"))
    np.testing.assert_array_equal(result[:, :8], image[:, :8])  # grey 127: kept (blended back)
    assert ">= 128 of 255" in " ".join(_inpaint_help().split())  # the threshold is documented


def _inpaint_help() -> str:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if getattr(a, "choices", None) and "inpaint" in a.choices)
    return action.choices["inpaint"].format_help()


def test_outpaint_extends_the_canvas(model_dir, tmp_path):
    rng = np.random.default_rng(4)
    PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    run("inpaint", "--model", str(model_dir), "--image", str(tmp_path / "image.png"), "--outpaint", "8", "0", "3",
        "0", "--steps", "2", "--out", str(tmp_path / "wider.png"))
    width, height = PIL.Image.open(tmp_path / "wider.png").size
    factor = 16 // 8  # the tiny model: 16 px images, 8x8 tokens
    assert height == 16 and width == 16 + 8 + -(-3 // factor) * factor
