"""Pre-tokenization: run the frozen VQ encoder once over K augmented views of every image and cache the token
grids in an Arrow file, so pre-training never runs the tokenizer.

View `v` of image `i` is exactly the crop the on-the-fly path uses for draw `v` of that image (see
`transforms.py`), so a pre-tokenized run with K >= (epochs x views per step) sees the same tokens as an
on-the-fly run.
"""

from __future__ import annotations

import hashlib
import json
import os

import datasets
import numpy as np
import torch
from transformers.utils import logging

from ..modeling_vqvae import MageVQModel
from .data import SAMPLE_INDEX_COLUMN, TOKEN_IDS_COLUMN, ImageData
from .transforms import MageImageTransform

logger = logging.get_logger(__name__)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def data_identity(source: str, split: str, num_rows: int) -> str:
    """What identifies the raw data: path, size and modification time for local files, else the name."""
    identity = {"source": source, "split": split, "rows": num_rows}
    if os.path.exists(source):
        stat = os.stat(source)
        identity.update(path=os.path.abspath(source), size=stat.st_size, mtime=stat.st_mtime_ns)
    return json.dumps(identity, sort_keys=True)


def pretokenize(data: ImageData, vqvae: MageVQModel, transform: MageImageTransform, num_views: int,
                cache_dir: str, data_id: str, batch_size: int = 256, device: torch.device | str = "cpu") -> datasets.Dataset:
    """Dataset with `image_token_ids` (K, N) int32 per image, `sample_index` and the label column (if any),
    cached under `cache_dir` by a key over the data, the transform, K and the tokenizer weights."""
    if num_views < 1:
        raise ValueError(f"`pretokenize_views` must be >= 1, got {num_views}")
    key = hashlib.sha256(json.dumps({
        "data": data_id, "transform": repr(transform.config), "views": num_views, "vqvae": weights_digest(vqvae),
    }, sort_keys=True).encode()).hexdigest()[:16]
    os.makedirs(cache_dir, exist_ok=True)
    cache_file = os.path.join(cache_dir, f"pretokenized-{key}.arrow")
    image_size = transform.config.image_size
    num_tokens = (image_size // vqvae.downsample_factor) ** 2
    vqvae = vqvae.to(device).eval()

    @torch.no_grad()
    def tokenize_batch(batch):
        views = []
        for view in range(num_views):
            pixels = torch.stack([transform(image, index, view) for image, index
                                  in zip(batch[data.image_column], batch[SAMPLE_INDEX_COLUMN])])
            views.append(vqvae.tokenize(pixels.to(device)).cpu())
        return {TOKEN_IDS_COLUMN: torch.stack(views, dim=1).numpy().astype(np.int32)}

    features = {name: feature for name, feature in data.dataset.features.items() if name != data.image_column}
    features[TOKEN_IDS_COLUMN] = datasets.Array2D(shape=(num_views, num_tokens), dtype="int32")
    if os.path.isfile(cache_file):
        logger.info(f"using pre-tokenized cache {cache_file}")
    return data.dataset.map(
        tokenize_batch, batched=True, batch_size=batch_size, remove_columns=[data.image_column],
        features=datasets.Features(features), cache_file_name=cache_file, load_from_cache_file=True,
        new_fingerprint=key, desc=f"pre-tokenizing {num_views} views per image",
    )
