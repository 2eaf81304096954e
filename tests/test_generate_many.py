"""examples/generate_many.py: the same PNG files from one process and from two (`accelerate launch`), resumable."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline_mage import make_tiny_pipeline

from conftest import free_port

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "generate_many.py"


@pytest.fixture(scope="module")
def generate_many():
    spec = importlib.util.spec_from_file_location("generate_many", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    from accelerate import PartialState

    PartialState._reset_state()  # the in-process run created accelerate's singleton state


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_processes_match_one_and_resume(tmp_path, generate_many):
    model = tmp_path / "model"
    make_tiny_pipeline().save_pretrained(model)
    options = ["--model", str(model), "--num-images", "7", "--batch-size", "2", "--steps", "4", "--seed", "3"]

    one = tmp_path / "one"
    generate_many.main([*options, "--out", str(one)])
    assert sorted(contents(one)) == [f"{i:05d}.png" for i in range(7)]

    two = tmp_path / "two"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(SCRIPT), *options, "--out", str(two),
    ]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert contents(two) == contents(one)

    # Resume: missing files are regenerated identically, existing ones are left alone, no temporary files remain.
    (one / "00004.png").unlink()
    (one / "00000.png").write_bytes(b"existing")
    generate_many.main([*options, "--out", str(one)])
    resumed = contents(one)
    assert resumed.pop("00000.png") == b"existing"
    assert resumed == {k: v for k, v in contents(two).items() if k != "00000.png"}
