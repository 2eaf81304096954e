"""`examples/make_readme_figures.py --figures ...`: only the named pictures are drawn, and the decoder comparison
refuses a tokenizer whose token ids differ from the model's."""

from __future__ import annotations

import pytest
import torch
from conftest import run_example
from PIL import Image
from test_pipeline_mage import make_tiny_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def folders(tmp_path):
    pipe = make_tiny_pipeline(class_conditional=True)
    pipe.save_pretrained(tmp_path / "pipe")
    with torch.no_grad():
        for parameter in pipe.vqvae.decoder.parameters():  # same encoder and codebook, another decoder
            parameter.add_(0.01)
    pipe.vqvae.save_pretrained(tmp_path / "decoder_tuned")
    with torch.no_grad():
        for parameter in pipe.vqvae.encoder.parameters():
            parameter.mul_(-1)
    pipe.vqvae.save_pretrained(tmp_path / "other_encoder")
    return tmp_path


def test_only_the_decoder_comparison_is_drawn(monkeypatch, folders, data_dir):
    out = folders / "figures"
    run_example(monkeypatch, "make_readme_figures", "--model", folders / "pipe", "--data", data_dir / "fashion_mnist_5k.npz",
                "--out", out, "--figures", "decoder_comparison", "--compare-vqvae", folders / "decoder_tuned")
    assert [p.name for p in out.iterdir()] == ["decoder_comparison.png"]
    with Image.open(out / "decoder_comparison.png") as picture:
        assert picture.height > 5 * 16 * 3  # five rows of 16 px images, enlarged 3x


def test_decoder_comparison_needs_the_same_token_ids(monkeypatch, folders, data_dir):
    with pytest.raises(ValueError, match="other token ids"):
        run_example(monkeypatch, "make_readme_figures", "--model", folders / "pipe", "--data",
                    data_dir / "fashion_mnist_5k.npz", "--out", folders / "figures", "--figures", "decoder_comparison",
                    "--compare-vqvae", folders / "other_encoder")
    with pytest.raises(SystemExit):  # the figure asked for without its tokenizer
        run_example(monkeypatch, "make_readme_figures", "--model", folders / "pipe", "--data",
                    data_dir / "fashion_mnist_5k.npz", "--out", folders / "figures", "--figures", "decoder_comparison")
