"""`mage_hf.training.data`: loading .npz / image folders, batch transforms, pre-tokenization."""

import numpy as np
import pytest
import torch
from PIL import Image

from mage_hf import MageVQModel
from mage_hf.training.data import (
    SAMPLE_INDEX_COLUMN,
    TOKEN_IDS_COLUMN,
    EpochShuffleSampler,
    PixelBatchTransform,
    TokenBatchTransform,
    collate_tensors,
    load_image_data,
)
from mage_hf.training.pretokenize import pretokenize
from mage_hf.training.transforms import ImageTransformConfig, MageImageTransform

from conftest import tiny_config_kwargs


def test_load_fashion_mnist_npz(data_dir):
    data = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=20)
    assert len(data.dataset) == 20 and data.num_classes == 10 and data.class_names[0] == "T-shirt/top"
    assert data.dataset[3][SAMPLE_INDEX_COLUMN] == 3
    test = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), split="test", max_samples=5)
    assert test.dataset[0][data.label_column] == int(np.load(data_dir / "fashion_mnist_5k.npz")["y_test"][0])


def test_load_image_folder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (20, 24), (i * 50, 0, 0)).save(tmp_path / label / f"{i}.png")
    data = load_image_data(str(tmp_path))
    assert len(data.dataset) == 4 and data.class_names == ["cat", "dog"]


def test_bad_sources_name_the_argument(tmp_path, data_dir):
    with pytest.raises(ValueError, match="train_data.*does not exist"):
        load_image_data(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="x_validation"):
        load_image_data(str(data_dir / "fashion_mnist_5k.npz"), split="validation")
    with pytest.raises(ValueError, match="train_data.*does not exist"):
        load_image_data(str(tmp_path / "no" / "such" / "folder"))


def test_batch_transforms_and_epochs(data_dir):
    data = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=6)
    transform = PixelBatchTransform(MageImageTransform(ImageTransformConfig(image_size=16)), data.image_column,
                                    data.label_column, num_views=2, label_key="class_labels")
    data.dataset.set_transform(transform)
    batch = collate_tensors([data.dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 2, 3, 16, 16) and batch["class_labels"].shape == (4,)
    first_epoch = data.dataset[0]["pixel_values"]
    transform.epoch = 1
    assert not torch.equal(first_epoch, data.dataset[0]["pixel_values"])
    transform.epoch = 0
    assert torch.equal(first_epoch, data.dataset[0]["pixel_values"])

    stored = {TOKEN_IDS_COLUMN: [np.arange(12).reshape(3, 4)], "label": [1]}
    tokens = TokenBatchTransform("label", num_views=2)
    tokens.epoch = 1  # draws 2 and 3 -> stored views 2 and 0
    out = tokens(stored)
    assert out[TOKEN_IDS_COLUMN].tolist() == [[[8, 9, 10, 11], [0, 1, 2, 3]]] and out["class_labels"].tolist() == [1]


def test_epoch_sampler_is_seeded_per_epoch():
    sampler = EpochShuffleSampler(10, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and first == list(sampler)
    sampler.epoch = 1
    assert list(sampler) != first


def test_pretokenized_views_equal_on_the_fly_crops(data_dir, tmp_path):
    torch.manual_seed(0)
    vqvae = MageVQModel(**tiny_config_kwargs()["vqvae_config"]).eval()
    data = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=6)
    transform = MageImageTransform(ImageTransformConfig(image_size=16, seed=7))
    cached = pretokenize(data, vqvae, transform, num_views=3, cache_dir=str(tmp_path), data_id="fmnist-6", batch_size=4)
    assert cached.features[TOKEN_IDS_COLUMN].shape == (3, 64)
    images = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=6).dataset
    keys = [(index, view) for index in (0, 5) for view in range(3)]
    expected = vqvae.tokenize(torch.stack([transform(images[i]["image"], i, v) for i, v in keys]))
    for (index, view), tokens in zip(keys, expected):
        assert cached[index][TOKEN_IDS_COLUMN][view] == tokens.tolist()
    # A second call reuses the Arrow cache.
    again = pretokenize(data, vqvae, transform, num_views=3, cache_dir=str(tmp_path), data_id="fmnist-6", batch_size=4)
    assert again.cache_files[0]["filename"] == cached.cache_files[0]["filename"]
