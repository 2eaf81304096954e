"""`mage-hf` console script on a tiny pipeline folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from test_pipeline_mage import make_tiny_pipeline

import mage_hf
from mage_hf import MageModel, cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_pipeline")
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(16, 16), (24, 20), (40, 16)]):
        PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    PIL.Image.fromarray(np.where(np.arange(16)[None, :] >= 8, 255, 0).astype(np.uint8).repeat(16, 0)).save(
        folder / "mask.L.bmp"
    )
    return folder


def run(*argv: str) -> None:
    assert cli.main(list(argv)) == 0


def fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_generate_grid_and_folder(model_dir, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    run("generate", "--model", str(model_dir), "--num-images", "3", "--batch-size", "2", "--steps", "4",
        "--out", str(grid), "--device", "cpu")
    assert "wrote 3 image(s)" in capsys.readouterr().out
    assert PIL.Image.open(grid).size == (32, 32)  # 2 x 2 grid of 16 px images

    folder = tmp_path / "images"
    run("generate", "--model", str(model_dir), "--num-images", "3", "--batch-size", "2", "--steps", "4",
        "--seed", "7", "--out", str(folder))
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"]
    # image i uses seed + i: the third image is the first of a run seeded at 9 (up to decoder rounding)
    single = tmp_path / "single.png"
    run("generate", "--model", str(model_dir), "--steps", "4", "--seed", "9", "--out", str(single))
    third, alone = (np.asarray(PIL.Image.open(p), dtype=int) for p in (files[2], single))
    assert np.abs(third - alone).max() <= 1


def test_refuses_to_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "one.png"
    out.write_bytes(b"user data")
    err = fails(capsys, "generate", "--model", str(model_dir), "--steps", "2", "--out", str(out))
    assert "refusing to overwrite" in err and out.read_bytes() == b"user data"
    run("generate", "--model", str(model_dir), "--steps", "2", "--out", str(out), "--overwrite")
    assert PIL.Image.open(out).size == (16, 16)

    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "00001.png").write_bytes(b"keep me")
    err = fails(capsys, "generate", "--model", str(model_dir), "--num-images", "2", "--out", str(folder))
    assert "00001.png" in err and (folder / "00001.png").read_bytes() == b"keep me"
    assert "must end with .png" in fails(capsys, "generate", "--model", str(model_dir), "--out", str(tmp_path / "x.jpg"))


def test_clear_errors(model_dir, tmp_path, capsys, monkeypatch):
    err = fails(capsys, "generate", "--model", str(model_dir), "--class-label", "3", "--out", str(tmp_path / "a.png"))
    assert "unconditional" in err
    assert "no such folder" in fails(capsys, "generate", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "c.png"))
    monkeypatch.setattr(mage_hf, "DEFAULT_MODEL_PATH", str(tmp_path / "missing_default_model"))
    err = fails(capsys, "generate", "--out", str(tmp_path / "b.png"))
    assert "embedded default model is missing" in err and "--model" in err


def test_inpaint(model_dir, image_files, tmp_path, capsys):
    out = tmp_path / "inpainted.png"
    run("inpaint", "--model", str(model_dir), "--image", str(image_files / "img0.png"),
        "--mask", str(image_files / "mask.L.bmp"), "--steps", "3", "--blend", "--out", str(out))
    result = np.asarray(PIL.Image.open(out))
    original = np.asarray(PIL.Image.open(image_files / "img0.png"))
    np.testing.assert_array_equal(result[:, :8], original[:, :8])  # blended back outside the mask
    err = fails(capsys, "inpaint", "--model", str(model_dir), "--image", str(image_files / "img1.png"),
                "--mask", str(image_files / "mask.L.bmp"), "--out", str(tmp_path / "bad.png"))
    assert "24x20 but the model takes 16x16" in err and "--resize" in err
    run("inpaint", "--model", str(model_dir), "--image", str(image_files / "img1.png"), "--resize",
        "--strength", "0.3", "--num-images", "2", "--steps", "3", "--out", str(tmp_path / "variations"))
    assert len(list((tmp_path / "variations").glob("*.png"))) == 2
    run("inpaint", "--model", str(model_dir), "--image", str(image_files / "img2.png"), "--outpaint-box", "4", "4",
        "12", "12", "--steps", "3", "--out", str(tmp_path / "outpainted.png"))
    assert PIL.Image.open(tmp_path / "outpainted.png").size == (16, 16)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_embed(model_dir, image_files, tmp_path, suffix):
    out = tmp_path / f"features{suffix}"
    files = sorted(image_files.glob("img*.png"))
    run("embed", "--model", str(model_dir), "--images", str(files[0]), *map(str, files[1:]), "--batch-size", "2",
        "--out", str(out))
    if suffix == ".npy":
        features = np.load(out)
    else:
        with safe_open(str(out), "np") as handle:
            features = handle.get_tensor("features")
            assert "img2.png" in handle.metadata()["files"]
    model = MageModel.from_pretrained(model_dir, subfolder="transformer").eval()
    processor = mage_hf.MageImageProcessor.from_mage_config(model.config)
    pixels = processor([PIL.Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=torch.as_tensor(pixels)).pooler_output.numpy()
    assert features.shape == (3, model.config.hidden_size)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_convert_then_generate(fixture_dir, tmp_path, capsys):
    out = tmp_path / "converted"
    run("convert", "--checkpoint", str(fixture_dir / "original_mage.pth"),
        "--original-config", str(fixture_dir / "config.json"), "--output", str(out))
    assert f"to {out}" in capsys.readouterr().out
    assert (out / "model_index.json").is_file()
    run("generate", "--model", str(out), "--steps", "2", "--out", str(tmp_path / "from_converted.png"))
    image = PIL.Image.open(tmp_path / "from_converted.png")
    assert image.size == (32, 32)  # the fixture's 32 px model
    fails(capsys, "convert", "--checkpoint", str(fixture_dir / "original_mage.pth"),
          "--original-config", str(fixture_dir / "config.json"), "--output", str(out))


def test_console_script(model_dir, tmp_path):
    script = Path(sys.executable).with_name("mage-hf")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    out = tmp_path / "from_script.png"
    result = subprocess.run([str(script), "generate", "--model", str(model_dir), "--steps", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote 1 image(s) to {out}" and out.is_file()
