"""Shared test fixtures: the reference data shipped in `tests/` and tiny configs.

Tests are offline and fast; anything slower than a few seconds is marked `slow` (excluded from CI).
Add new shared fixtures at the end of this file; do not change existing ones.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
# The original code's outputs on tiny random checkpoints (see its README), copied into the project so the parity
# tests run on a fresh clone.
FIXTURE_DIR = TESTS_DIR / "fixtures" / "original_tiny"
# A class-balanced Fashion-MNIST subset (see tests/data/README.md).
DATA_DIR = TESTS_DIR / "data"
FASHION_MNIST_SUBSET = DATA_DIR / "fashion_mnist_5k.npz"


def tiny_config_kwargs(**overrides) -> dict:
    """A MAGE small enough for unit tests: 16 px images -> 8x8 tokens, codebook 16, 10 classes + the fake class."""
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
        image_size=16,
        num_class_tokens=11,  # 10 classes + the fake class
        fake_class_label=16 + 10,
        max_position_embeddings=65,
        vqvae_config=dict(
            base_channels=32, channel_multipliers=[1, 2], num_res_blocks=1, latent_channels=32,
            codebook_size=16, sample_size=16,
        ),
    )
    kwargs.update(overrides)
    return kwargs


@pytest.fixture
def tiny_config():
    from mage_hf import MageConfig

    return MageConfig(**tiny_config_kwargs())


@pytest.fixture
def tiny_images():
    """(2, 3, 16, 16) images in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 16, 16, generator=generator)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    # Shipped with the tests: a missing folder is a broken checkout, which must fail rather than skip.
    assert FIXTURE_DIR.is_dir(), f"original fixtures missing at {FIXTURE_DIR}"
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert FASHION_MNIST_SUBSET.is_file(), f"Fashion-MNIST subset missing at {FASHION_MNIST_SUBSET}"
    return DATA_DIR


@pytest.fixture(scope="session")
def fashion_mnist_path(data_dir) -> Path:
    """The Fashion-MNIST subset `.npz` (same keys as the full file: x_train, y_train, x_test, y_test, class_names)."""
    return FASHION_MNIST_SUBSET


@pytest.fixture(scope="session")
def converted_original(fixture_dir, tmp_path_factory) -> dict:
    """The fixture's original checkpoints converted by `mage_hf.convert_original.convert_checkpoint`.

    Keys: `"pretraining"` (a `MagePipeline` folder), `"gap"` and `"cls"` (`MageForImageClassification` folders,
    global-pool and class-token heads). Read-only: copy a folder before changing it.
    """
    from mage_hf.convert_original import convert_checkpoint

    root = tmp_path_factory.mktemp("converted_original")
    original_config = fixture_dir / "config.json"
    folders = {"pretraining": convert_checkpoint(fixture_dir / "original_mage.pth", root / "pretraining",
                                                 original_config=original_config)}
    for kind in ("gap", "cls"):
        folders[kind] = convert_checkpoint(fixture_dir / f"original_finetuned_{kind}.pth", root / kind,
                                           original_config=original_config)
    return folders


@pytest.fixture(scope="session")
def reference_tensors(fixture_dir) -> dict:
    """The original implementation's outputs (`reference.safetensors`, see the fixture README)."""
    from safetensors.torch import load_file

    return load_file(fixture_dir / "reference.safetensors")


EXAMPLES_DIR = REPO_ROOT / "examples"


@pytest.fixture
def single_thread():
    """Tiny models run far faster on one thread on this CPU, above all when it is shared; use with
    `pytestmark = pytest.mark.usefixtures("single_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    """A free local TCP port, so parallel multi-process runs never share a rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_example(monkeypatch, name: str, *args):
    """Run `examples/<name>.py`'s `main()` in this process with `args` as its command line."""
    path = EXAMPLES_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(path), *map(str, args)])
    return module.main()
