"""Shared test fixtures: paths to ../shared material and tiny configs.

Tests are offline and fast; anything slower than a few seconds is marked `slow` (excluded from CI).
Add new shared fixtures at the end of this file; do not change existing ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("MAGE_SHARED_DIR", REPO_ROOT.parent / "shared"))
FIXTURE_DIR = SHARED_DIR / "fixtures" / "original_tiny"
DATA_DIR = SHARED_DIR / "data"


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
    if not FIXTURE_DIR.is_dir():
        pytest.skip(f"original fixtures not found at {FIXTURE_DIR}")
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"shared data not found at {DATA_DIR}")
    return DATA_DIR
