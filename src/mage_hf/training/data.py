"""Image data for the training scripts: one loader for image folders, `.npz` arrays and `datasets` names,
and the batch transforms handed to `datasets.Dataset.set_transform`.

Every dataset gets a `sample_index` column (the row number): the augmentations are keyed by it, see
`transforms.py`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .transforms import MageImageTransform

logger = logging.get_logger(__name__)

SAMPLE_INDEX_COLUMN = "sample_index"
TOKEN_IDS_COLUMN = "image_token_ids"
_IMAGE_COLUMN_GUESSES = ("image", "img", "pixel_values", "picture")
_LABEL_COLUMN_GUESSES = ("label", "labels", "fine_label", "class")


@dataclass
class ImageData:
    """A loaded split: `dataset` has the image column, `sample_index` and, when labelled, the label column."""

    dataset: datasets.Dataset
    image_column: str
    label_column: str | None
    class_names: list[str] | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0


def _load_npz(path: str, split: str, argument: str, max_samples: int | None) -> tuple[datasets.Dataset, list[str] | None]:
    with np.load(path, allow_pickle=False) as arrays:
        images_key, labels_key = f"x_{split}", f"y_{split}"
        if images_key not in arrays.files:
            raise ValueError(
                f"`{argument}` {path!r} has no array {images_key!r} for split {split!r}; arrays: {sorted(arrays.files)}"
            )
        images = arrays[images_key][:max_samples]
        labels = arrays[labels_key][:max_samples] if labels_key in arrays.files else None
        class_names = [str(name) for name in arrays["class_names"]] if "class_names" in arrays.files else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise ValueError(
            f"`{argument}` {path!r}: {images_key!r} must be uint8 of shape (N, H, W) or (N, H, W, 3), "
            f"got {images.dtype} {images.shape}"
        )
    columns = {"image": list(images)}
    features = {"image": datasets.Image()}
    if labels is not None:
        labels = labels.astype(np.int64)
        if class_names is None:
            class_names = [str(i) for i in range(int(labels.max()) + 1)]
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise ValueError(f"`{argument}` {path!r}: {labels_key!r} must be in [0, {len(class_names) - 1}]")
        columns["label"] = labels
        features["label"] = datasets.ClassLabel(names=class_names)
    dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    return dataset, class_names if labels is not None else None


def _load_source(source: str, split: str, argument: str, max_samples: int | None = None) -> datasets.Dataset:
    if source.endswith(".npz"):
        if not os.path.isfile(source):
            raise ValueError(f"`{argument}` {source!r} does not exist (expected an .npz file with `x_{split}`)")
        return _load_npz(source, split, argument, max_samples)[0]
    if os.path.isdir(source):
        if any(os.path.isfile(os.path.join(source, name)) for name in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(source)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"`{argument}` {source!r} has no split {split!r}; splits: {sorted(loaded)}")
                loaded = loaded[split]
            return loaded
        return datasets.load_dataset("imagefolder", data_dir=source, split=split)
    if source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1):
        raise ValueError(
            f"`{argument}` {source!r} does not exist (expected an image folder, an .npz file or a `datasets` name)"
        )
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as error:  # noqa: BLE001 - any loader failure means the same thing to the user
        raise ValueError(
            f"`{argument}` {source!r} is not a file or folder, and loading it as a `datasets` name failed "
            f"(offline, it must already be in the local cache): {error}"
        ) from error


def _pick_column(dataset: datasets.Dataset, requested: str | None, guesses, feature_type, what: str, argument: str):
    if requested is not None:
        if requested not in dataset.column_names:
            raise ValueError(f"`{argument}` {requested!r} is not a column; columns: {dataset.column_names}")
        return requested
    typed = [name for name, feature in dataset.features.items() if isinstance(feature, feature_type)]
    if typed:
        return typed[0]
    named = [name for name in guesses if name in dataset.column_names]
    if named:
        return named[0]
    if what == "image":
        raise ValueError(f"no image column found in {dataset.column_names}; pass `{argument}`")
    return None


def load_image_data(
    source: str,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    argument: str = "train_data",
) -> ImageData:
    """Load `source` (image folder, `.npz` with `x_{split}`[, `y_{split}`, `class_names`], a `save_to_disk`
    folder or a `datasets` name) as an `ImageData`; the first `max_samples` rows if given."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"`max_train_samples` must be positive, got {max_samples}")
    dataset = _load_source(source, split, argument, max_samples)
    image_column = _pick_column(dataset, image_column, _IMAGE_COLUMN_GUESSES, datasets.Image, "image", "image_column")
    label_column = _pick_column(dataset, label_column, _LABEL_COLUMN_GUESSES, datasets.ClassLabel, "label", "label_column")
    if max_samples is not None and len(dataset) > max_samples:
        dataset = dataset.select(range(max_samples))
    if len(dataset) == 0:
        raise ValueError(f"`{argument}` {source!r} split {split!r} has no images")
    keep = [image_column] + ([label_column] if label_column else [])
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
    dataset = dataset.add_column(SAMPLE_INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64))
    class_names = None
    if label_column:
        feature = dataset.features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            class_names = list(feature.names)
        else:
            class_names = [str(i) for i in range(int(max(dataset[label_column])) + 1)]
    logger.info(f"loaded {len(dataset)} images from {source!r} (split {split!r}, {len(class_names or [])} classes)")
    return ImageData(dataset, image_column, label_column, class_names)


class PixelBatchTransform:
    """`set_transform` callable: a batch of raw rows -> `pixel_values` (B, 3, S, S), or (B, V, 3, S, S) when
    `num_views` > 1, plus the labels under `label_key` (B,) when the data is labelled.

    Draw `epoch * num_views + v` of each sample is used for view `v`, so every epoch sees new crops and a
    resumed run sees the same ones. `epoch` is set by `EpochCallback`.
    """

    def __init__(self, image_transform: MageImageTransform, image_column: str, label_column: str | None = None,
                 num_views: int = 1, label_key: str = "labels"):
        self.image_transform = image_transform
        self.image_column = image_column
        self.label_column = label_column
        self.num_views = num_views
        self.label_key = label_key
        self.epoch = 0

    def __call__(self, batch: dict) -> dict:
        views = []
        for image, index in zip(batch[self.image_column], batch[SAMPLE_INDEX_COLUMN]):
            draws = [self.epoch * self.num_views + v for v in range(self.num_views)]
            views.append(torch.stack([self.image_transform(image, index, draw) for draw in draws]))
        pixel_values = torch.stack(views)
        output = {"pixel_values": pixel_values if self.num_views > 1 else pixel_values[:, 0]}
        if self.label_column is not None:
            output[self.label_key] = torch.as_tensor(batch[self.label_column], dtype=torch.long)
        return output


class TokenBatchTransform:
    """`set_transform` callable for pre-tokenized data: rows holding K token grids (K, N) per image ->
    `image_token_ids` (B, N), or (B, V, N) when `num_views` > 1. Draw `d = epoch * num_views + v` uses stored
    view `d % K`, which is the crop the on-the-fly path would have used for the first K draws."""

    def __init__(self, label_column: str | None = None, num_views: int = 1, label_key: str = "class_labels"):
        self.label_column = label_column
        self.num_views = num_views
        self.label_key = label_key
        self.epoch = 0

    def __call__(self, batch: dict) -> dict:
        stored = torch.as_tensor(np.asarray(batch[TOKEN_IDS_COLUMN]), dtype=torch.long)  # (B, K, N)
        draws = torch.tensor([(self.epoch * self.num_views + v) % stored.shape[1] for v in range(self.num_views)])
        token_ids = stored[:, draws]
        output = {TOKEN_IDS_COLUMN: token_ids if self.num_views > 1 else token_ids[:, 0]}
        if self.label_column is not None:
            output[self.label_key] = torch.as_tensor(batch[self.label_column], dtype=torch.long)
        return output


def collate_tensors(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack per-example tensors key by key."""
    return {key: torch.stack([torch.as_tensor(example[key]) for example in examples]) for key in examples[0]}


def epoch_of(state_epoch: float | None) -> int:
    """The integer epoch a Trainer is in, from `TrainerState.epoch` (None before the first step)."""
    return int(math.floor((state_epoch or 0.0) + 1e-9))


class EpochCallback(TrainerCallback):
    """Tells the batch transforms which epoch starts, so that each epoch draws new augmentations.

    The transforms run in the main process or in data-loader workers started per epoch (the dataset is copied
    to them when the epoch's iterator is created, after this callback), so persistent workers are not supported.
    """

    def __init__(self, *transforms):
        self.transforms = transforms

    def on_epoch_begin(self, args, state, control, **kwargs):
        for transform in self.transforms:
            transform.epoch = epoch_of(state.epoch)


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A random permutation per epoch, seeded by `seed + epoch` (the same on every process, so Accelerate's
    batch sharding splits one global order). Set `epoch` before iterating."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())
