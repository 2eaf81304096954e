"""Frozen MAGE embeddings for recognition: load the encoder from any MAGE folder and extract `pooler_output`
(the original linear-probe feature), the class token or the image tokens over a dataset, sharded across processes
when run under Accelerate."""

from __future__ import annotations

import os

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..embeddings import check_feature_kind, select_features
from ..modeling_mage import MageModel
from .arguments import pipeline_subfolder
from .data import ImageData, PixelBatchTransform, collate_tensors
from .transforms import ImageTransformConfig, MageImageTransform


def load_mage_encoder(path: str, argument: str = "model_name_or_path") -> MageModel:
    """`MageModel` (encoder + built-in tokenizer) from a pipeline, pre-training, classifier or encoder folder."""
    if not os.path.isdir(path):
        raise ValueError(f"`{argument}` {path!r} is not a folder (expected a MAGE pipeline or model folder)")
    return MageModel.from_pretrained(path, subfolder=pipeline_subfolder(path, "transformer")).eval()


@torch.no_grad()
def extract_features(model: MageModel | None, data: ImageData, transform_config: ImageTransformConfig,
                     accelerator: Accelerator, batch_size: int = 256,
                     kind: str = "pooler") -> tuple[np.ndarray, np.ndarray | None]:
    """(features (N, D) float32, labels (N,) or None) in dataset order: `kind` one of
    `mage_hf.embeddings.FEATURE_KINDS` ("pooler" = `pooler_output`, "cls", "tokens"). `model=None` gives raw
    pixels (N, 3 * S * S) in [0, 1] instead (the baseline `--features raw`)."""
    features, labels = extract_feature_kinds(model, data, transform_config, accelerator, batch_size, (kind,))
    return features[kind], labels


@torch.no_grad()
def extract_feature_kinds(model: MageModel | None, data: ImageData, transform_config: ImageTransformConfig,
                          accelerator: Accelerator, batch_size: int = 256, kinds: tuple[str, ...] = ("pooler",),
                          ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """`extract_features` for several kinds from one pass over the data: ({kind: (N, D_kind) float32}, labels).
    With `model=None` every kind maps to the raw pixels."""
    for kind in kinds:
        check_feature_kind(kind)
    transform = PixelBatchTransform(MageImageTransform(transform_config), data.image_column, data.label_column)
    data.dataset.set_transform(transform)
    loader = accelerator.prepare(DataLoader(data.dataset, batch_size=batch_size, collate_fn=collate_tensors))
    features, labels = {kind: [] for kind in kinds}, []
    for batch in loader:
        pixels = batch["pixel_values"]
        outputs = None if model is None else model(pixel_values=pixels.to(model.dtype))
        for kind in kinds:
            output = pixels.flatten(1) if outputs is None else select_features(outputs, kind)
            features[kind].append(accelerator.gather_for_metrics(output.float().contiguous()).cpu())
        if "labels" in batch:
            labels.append(accelerator.gather_for_metrics(batch["labels"]).cpu())
    data.dataset.reset_format()
    return ({kind: torch.cat(chunks).numpy() for kind, chunks in features.items()},
            torch.cat(labels).numpy() if labels else None)
