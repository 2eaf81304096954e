"""The sample judge kept in a file (`load_or_train_sample_judge`): trained once, then loaded by every script that
asks for the same judge, and never replaced by one trained otherwise."""

import pytest
import torch

from mage_hf import sample_quality
from mage_hf.sample_quality import judge_outputs, load_or_train_sample_judge


@pytest.fixture
def images_and_labels():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(40, 1, 8, 8, generator=generator), torch.arange(40) % 3


def test_a_saved_judge_is_loaded_not_retrained(tmp_path, monkeypatch, images_and_labels):
    images, labels = images_and_labels
    path = tmp_path / "judges" / "judge.safetensors"
    trained = load_or_train_sample_judge(str(path), images, labels, epochs=1, seed=0)
    assert path.is_file() and not list((tmp_path / "judges").glob(".*"))  # no partial file left

    def no_training(*args, **kwargs):
        raise AssertionError("the saved judge should have been loaded")

    monkeypatch.setattr(sample_quality, "train_sample_judge", no_training)
    loaded = load_or_train_sample_judge(str(path), images, labels, epochs=1, seed=0)
    expected_logits, expected_features = judge_outputs(trained, images)
    logits, features = judge_outputs(loaded, images)
    assert torch.equal(logits, expected_logits) and (features == expected_features).all()
    assert not loaded.training


def test_a_judge_trained_otherwise_is_an_error_and_stays(tmp_path, images_and_labels):
    images, labels = images_and_labels
    path = tmp_path / "judge.safetensors"
    load_or_train_sample_judge(str(path), images, labels, epochs=1, seed=0)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"epochs '1' \(this run: '2'\)"):
        load_or_train_sample_judge(str(path), images, labels, epochs=2, seed=0)
    with pytest.raises(ValueError, match="data_sha256"):
        load_or_train_sample_judge(str(path), images.flip(-1), labels, epochs=1, seed=0)
    assert path.read_bytes() == before


def test_without_a_path_the_judge_is_trained_in_memory(tmp_path, monkeypatch, images_and_labels):
    images, labels = images_and_labels
    monkeypatch.chdir(tmp_path)
    judge = load_or_train_sample_judge(None, images, labels, epochs=1, seed=0, num_classes=4)
    assert judge.head.out_features == 4 and list(tmp_path.iterdir()) == []
