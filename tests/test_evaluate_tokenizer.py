"""`examples/evaluate_tokenizer.py`: one table row per tokenizer, from its own folder or a pipeline's `vqvae/`,
with numbers that tell a faithful tokenizer from a broken one."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EXAMPLES_DIR, run_example
from test_pipeline_mage import make_tiny_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def tokenizer_folders(tmp_path):
    """A tiny pipeline folder, its VQ model saved on its own, and a copy whose decoder outputs a constant."""
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.vqvae.save_pretrained(tmp_path / "vq")
    broken = make_tiny_pipeline().vqvae
    with torch.no_grad():
        for parameter in broken.decoder.parameters():
            parameter.zero_()
    broken.save_pretrained(tmp_path / "broken")
    return tmp_path


def test_table_rows_per_tokenizer(monkeypatch, tmp_path, tokenizer_folders, data_dir):
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))  # the script imports its sibling evaluate_default.py
    out = tmp_path / "tokenizers.json"
    results = run_example(
        monkeypatch, "evaluate_tokenizer", "--data", data_dir / "fashion_mnist_5k.npz",
        "--tokenizers", tokenizer_folders / "pipe", tokenizer_folders / "vq", tokenizer_folders / "broken",
        "--names", "pipeline", "own folder", "constant decoder", "--judge-epochs", 1,
        "--max-train-samples", 300, "--max-test-samples", 80, "--out", out,
    )
    rows = results["tokenizers"]
    assert list(rows) == ["pipeline", "own folder", "constant decoder"]
    assert json.loads(out.read_text())["tokenizers"].keys() == rows.keys()
    # The pipeline's vqvae/ and the same weights in their own folder measure the same.
    assert {k: v for k, v in rows["pipeline"].items() if k != "path"} == {
        k: v for k, v in rows["own folder"].items() if k != "path"}
    for row in rows.values():
        assert 0 < row["used_fraction"] <= 1 and 1 <= row["perplexity"] <= 16  # the tiny codebook has 16 codes
    # A decoder that ignores its tokens reconstructs nothing: a far larger distance to the test images.
    assert rows["constant decoder"]["rfid_fmnist_cnn"] > rows["pipeline"]["rfid_fmnist_cnn"]


def test_label_count_must_match(monkeypatch, tokenizer_folders, data_dir):
    with pytest.raises(SystemExit):
        run_example(monkeypatch, "evaluate_tokenizer", "--data", data_dir / "fashion_mnist_5k.npz",
                    "--tokenizers", tokenizer_folders / "vq", "--names", "a", "b")
