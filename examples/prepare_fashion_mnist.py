"""Write Fashion-MNIST as the `.npz` the examples read (`x_train`, `y_train`, `x_test`, `y_test`, `class_names`).

Sources, first found wins:
- Debian's `dataset-fashion-mnist` package (IDX files under /usr/share/datasets/fashion-mnist), offline;
- the Hugging Face Hub dataset `fashion_mnist` (`--source hub`, needs network).

    python examples/prepare_fashion_mnist.py --out data/fashion_mnist.npz
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import struct

import numpy as np

logger = logging.getLogger("prepare_fashion_mnist")

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IDX_UNSIGNED_BYTE = 0x08


def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) of unsigned bytes -> array of its declared shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        zero, dtype, ndim = struct.unpack(">HBB", handle.read(4))
        if zero != 0 or dtype != IDX_UNSIGNED_BYTE:
            raise ValueError(f"{path} is not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, handle.read(4 * ndim))
        data = np.frombuffer(handle.read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} values for declared shape {shape}")
    return data.reshape(shape)


def from_debian(directory: str) -> dict[str, np.ndarray]:
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        arrays[f"x_{split}"] = read_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"))
        arrays[f"y_{split}"] = read_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    return arrays


def from_hub() -> dict[str, np.ndarray]:
    import datasets

    loaded = datasets.load_dataset("fashion_mnist")
    arrays = {}
    for split in ("train", "test"):
        arrays[f"x_{split}"] = np.stack([np.asarray(image, dtype=np.uint8) for image in loaded[split]["image"]])
        arrays[f"y_{split}"] = np.asarray(loaded[split]["label"], dtype=np.int64)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--source", choices=["auto", "debian", "hub"], default="auto")
    parser.add_argument("--debian-dir", default=DEBIAN_DIR)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"--out {args.out} exists; pass --overwrite to replace it")
    use_debian = args.source == "debian" or (args.source == "auto" and os.path.isdir(args.debian_dir))
    arrays = from_debian(args.debian_dir) if use_debian else from_hub()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, class_names=np.array(CLASS_NAMES), **arrays)
    for key, value in arrays.items():
        logger.info("%s %s %s", key, value.shape, value.dtype)
    logger.info("wrote %s (source: %s)", args.out, "debian" if use_debian else "hub")


if __name__ == "__main__":
    main()
