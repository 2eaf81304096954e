"""Conversion and weight files (issue 12 items 6 and 7): `--overwrite` replaces only the converted files and names
them, keeps every other file (also inside `transformer/` and `vqvae/`), never leaves a half-written folder; a file
that is not a MAGE checkpoint says so; a truncated safetensors file is named with the reason."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch

from mage_hf import MagePipeline, MageVQModel, cli
from mage_hf.convert_original import ConversionError, convert_checkpoint
from mage_hf.weights_check import check_safetensors_file, check_safetensors_folder

USER_FILES = {
    "transformer/my_notes.txt": "notes about the transformer",
    "transformer/extra/deep.bin": "nested user data",
    "vqvae/my_tokenizer_eval.json": '{"psnr": 21.0}',
    "notes.txt": "top-level notes",
    "my_data/x.txt": "a folder the conversion never writes",
}


def _put_user_files(folder):
    for relative, text in USER_FILES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)


def _assert_user_files_intact(folder):
    for relative, text in USER_FILES.items():
        assert (folder / relative).read_text() == text, relative


@pytest.fixture
def converted(fixture_dir, tmp_path):
    output = tmp_path / "out"
    convert_checkpoint(fixture_dir / "original_mage.pth", output, original_config=fixture_dir / "config.json")
    return output


def test_overwrite_keeps_user_files_inside_component_folders(fixture_dir, converted, caplog):
    _put_user_files(converted)
    (converted / "transformer" / "config.json").write_text("{}")  # a converted file, edited: must be replaced
    with caplog.at_level(logging.WARNING, logger="mage_hf.convert_original"):
        convert_checkpoint(fixture_dir / "original_mage.pth", converted, original_config=fixture_dir / "config.json",
                           overwrite=True)
    _assert_user_files_intact(converted)
    replaced = next(r.getMessage() for r in caplog.records if "replaced" in r.getMessage())
    for name in ("transformer/config.json", "transformer/model.safetensors", "vqvae/config.json",
                 "vqvae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "model_index.json"):
        assert name in replaced
    kept = next(r.getMessage() for r in caplog.records if "kept" in r.getMessage())
    for name in ("transformer/my_notes.txt", "transformer/extra/deep.bin", "vqvae/my_tokenizer_eval.json", "notes.txt",
                 "my_data/"):
        assert name in kept
    assert not any(name in replaced for name in USER_FILES)
    MagePipeline.from_pretrained(converted)  # and the folder is a complete pipeline again
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_cli_convert_overwrite_keeps_user_files(fixture_dir, converted):
    _put_user_files(converted)
    assert cli.main(["convert", "--checkpoint", str(fixture_dir / "original_mage.pth"), "--original-config",
                     str(fixture_dir / "config.json"), "--output", str(converted), "--overwrite"]) == 0
    _assert_user_files_intact(converted)


def test_a_failed_install_leaves_the_old_folder_whole(fixture_dir, converted, monkeypatch):
    """An error (or a kill) while the new folders are moved in: each folder is the old or the new one, complete."""
    _put_user_files(converted)
    before = {p.relative_to(converted).as_posix() for p in converted.rglob("*")}
    real_rename = os.rename

    def fail_moving_in_the_new_transformer(source, destination):
        # after `scheduler/` was swapped and the old `transformer/` parked (putting it back still works)
        if os.fspath(destination) == os.fspath(converted / "transformer") and "-converting-" in os.fspath(source):
            raise OSError("simulated failure")
        return real_rename(source, destination)

    monkeypatch.setattr(os, "rename", fail_moving_in_the_new_transformer)
    with pytest.raises(OSError, match="simulated"):
        convert_checkpoint(fixture_dir / "original_mage.pth", converted, original_config=fixture_dir / "config.json",
                           overwrite=True)
    monkeypatch.setattr(os, "rename", real_rename)
    _assert_user_files_intact(converted)
    assert {p.relative_to(converted).as_posix() for p in converted.rglob("*")} == before
    MagePipeline.from_pretrained(converted)


def test_overwrite_refuses_a_file_where_a_folder_is_written(fixture_dir, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "transformer").write_text("a file, not a folder")
    with pytest.raises(FileExistsError, match=r"transformer is a file where the conversion writes a folder"):
        convert_checkpoint(fixture_dir / "original_mage.pth", output, original_config=fixture_dir / "config.json",
                           overwrite=True)
    assert (output / "transformer").read_text() == "a file, not a folder"


def test_a_checkpoint_that_is_not_mage_says_so(fixture_dir, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3), "bn1.weight": torch.ones(2), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(ConversionError, match=r"resnet\.pth is not a MAGE checkpoint: no keys like `blocks\.\*`.*"
                                              r"bn1\.weight, conv1\.weight, fc\.bias"):
        convert_checkpoint(path, tmp_path / "out", original_config=fixture_dir / "config.json")
    with pytest.raises(ConversionError, match=r"is a VQGAN checkpoint, not a MAGE one: pass it with `--vqgan`"):
        convert_checkpoint(fixture_dir / "original_vqgan.ckpt", tmp_path / "out",
                           original_config=fixture_dir / "config.json")


@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_safetensors_are_named(converted, tmp_path, cut):
    folder = tmp_path / "copy"
    shutil.copytree(converted, folder)
    path = folder / "vqvae" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:6] if cut == "header" else data[:-100])
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors: not a readable safetensors file"):
        check_safetensors_file(path)
    with pytest.raises(ValueError, match=r"vqvae/diffusion_pytorch_model\.safetensors: not a readable"):
        check_safetensors_folder(folder)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.safetensors: not a readable safetensors file"):
        MageVQModel.from_pretrained(folder, subfolder="vqvae")
    # The intact transformer weights pass.
    check_safetensors_file(folder / "transformer" / "model.safetensors")
