"""Pre-tokenization: run the frozen VQ encoder once over K augmented views of every image and cache the token
grids in an Arrow file, so pre-training never runs the tokenizer.

View `v` of image `i` is exactly the crop the on-the-fly path uses for draw `v` of that image (see
`transforms.py`), so a pre-tokenized run with K >= (epochs x views per step) sees the same tokens as an
on-the-fly run.

Sharded across processes: the rows are cut into shards of `shard_size` rows (fixed by the data size and
`shard_size`, never by the number of processes), process r of W tokenizes the contiguous block of shards
`[r * S // W, (r + 1) * S // W)` on its own device and writes each shard atomically to
`<cache_dir>/pretokenized-<key>.shards/rows-<start>-<end>.arrow`. After a barrier, process 0 concatenates the
shards into `<cache_dir>/pretokenized-<key>.arrow` with record batches of a fixed size, removes the shard folder,
and every process reads that one file. One process is the case W = 1 of the same code, so the cache is the same
bytes whatever the number of processes (tokenizer batches always start at multiples of `batch_size`). A killed
run resumes: a shard whose final file exists with the expected rows and schema is not redone; temporary files
(`.*.tmp`) of an interrupted write are ignored and removed with the shard folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.arrow_writer import ArrowWriter
from transformers.utils import logging

from ..modeling_vqvae import MageVQModel
from .data import SAMPLE_INDEX_COLUMN, TOKEN_IDS_COLUMN, ImageData
from .transforms import MageImageTransform

logger = logging.get_logger(__name__)

DEFAULT_BATCHES_PER_SHARD = 8  # default shard = 8 tokenizer batches: resume loses at most that much per process
COMBINED_RECORD_BATCH_ROWS = datasets.config.DEFAULT_MAX_BATCH_SIZE  # rows per record batch of the combined file


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


def cache_key(data_id: str, transform: MageImageTransform, num_views: int, vqvae: MageVQModel) -> str:
    """16 hex digits over the data, the transform config, K and the tokenizer weights (not the process count)."""
    return hashlib.sha256(json.dumps({
        "data": data_id, "transform": repr(transform.config), "views": num_views, "vqvae": weights_digest(vqvae),
    }, sort_keys=True).encode()).hexdigest()[:16]


def cache_paths(cache_dir: str, key: str) -> tuple[str, str]:
    """(the combined cache file, the folder of its shards)."""
    cache_file = os.path.join(cache_dir, f"pretokenized-{key}.arrow")
    return cache_file, cache_file[: -len(".arrow")] + ".shards"


def tokens_per_image(transform: MageImageTransform, vqvae: MageVQModel) -> int:
    """N, the token grid's size: (image_size / downsample_factor)^2."""
    return (transform.config.image_size // vqvae.downsample_factor) ** 2


def token_features(data: ImageData, num_views: int, num_tokens: int) -> datasets.Features:
    """The cache's columns: the data's columns but the image (in order), then `image_token_ids` (K, N) int32."""
    features = {name: feature for name, feature in data.dataset.features.items() if name != data.image_column}
    features[TOKEN_IDS_COLUMN] = datasets.Array2D(shape=(num_views, num_tokens), dtype="int32")
    return datasets.Features(features)


def shard_ranges(num_rows: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, end) rows of every shard: consecutive blocks of `shard_size` rows, the last one shorter."""
    return [(start, min(start + shard_size, num_rows)) for start in range(0, num_rows, shard_size)]


def process_shards(num_shards: int, process_index: int, num_processes: int) -> range:
    """Indices of the shards process `process_index` of `num_processes` tokenizes: one contiguous block, the
    blocks as even as whole shards allow (a process gets none when there are fewer shards than processes)."""
    if num_processes < 1:
        raise ValueError(f"`num_processes` must be >= 1, got {num_processes}")
    if not 0 <= process_index < num_processes:
        raise ValueError(f"`process_index` must be in [0, {num_processes - 1}], got {process_index}")
    return range(process_index * num_shards // num_processes, (process_index + 1) * num_shards // num_processes)


def resolve_shard_size(batch_size: int, shard_size: int | None) -> int:
    """`shard_size` checked (a positive multiple of `batch_size`), or the default of whole tokenizer batches."""
    if batch_size < 1:
        raise ValueError(f"`pretokenize_batch_size` must be >= 1, got {batch_size}")
    if shard_size is None:
        return batch_size * DEFAULT_BATCHES_PER_SHARD
    if shard_size < 1 or shard_size % batch_size:
        raise ValueError(f"`shard_size` must be a positive multiple of `batch_size` ({batch_size}), got {shard_size}")
    return shard_size


def shard_file(shard_dir: str, start: int, end: int) -> str:
    """The final file of the shard holding rows [start, end)."""
    return os.path.join(shard_dir, f"rows-{start:012d}-{end:012d}.arrow")


def read_arrow(path: str) -> pa.Table:
    """A memory-mapped Arrow stream file (what `ArrowWriter` and `datasets` write) as a table."""
    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


def is_finished_shard(path: str, num_rows: int, features: datasets.Features) -> bool:
    """Whether `path` is a complete shard: it exists (shards appear only by an atomic rename), reads, and has
    `num_rows` rows with the expected columns and types."""
    if not os.path.isfile(path):
        return False
    try:
        table = read_arrow(path)
    except (OSError, pa.ArrowException) as error:
        logger.warning(f"unreadable shard {path} will be redone: {error}")
        return False
    if table.num_rows != num_rows or not table.schema.equals(features.arrow_schema, check_metadata=False):
        logger.warning(f"shard {path} has {table.num_rows} rows (expected {num_rows}) or other columns: redone")
        return False
    return True


def write_atomically(path: str, features: datasets.Features, write: Callable[[ArrowWriter], None]) -> None:
    """Run `write(writer)` on an `ArrowWriter` into a temporary file beside `path`, then rename it to `path`."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(handle)
    try:
        with ArrowWriter(features=features, path=temporary) as writer:
            write(writer)
            writer.finalize()
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def tokenize_shards(data: ImageData, vqvae: MageVQModel, transform: MageImageTransform, num_views: int,
                    shard_dir: str, batch_size: int = 256, device: torch.device | str = "cpu", *,
                    process_index: int = 0, num_processes: int = 1, shard_size: int | None = None) -> list[str]:
    """Tokenize this process's block of shards into `shard_dir`, skipping finished ones; returns their files.

    Each shard file holds, for its rows [start, end), the data's columns but the image and `image_token_ids`
    (end - start, K, N) int32, N = (image_size / downsample_factor)^2: view `v` of row `i` is
    `vqvae.tokenize(transform(image_i, i, v))`. Tokenizer batches are rows [b, b + batch_size) with b a
    multiple of `batch_size` (shards are whole batches), so every image is tokenized in the same batch
    whatever `num_processes` is.
    """
    if num_views < 1:
        raise ValueError(f"`pretokenize_views` must be >= 1, got {num_views}")
    shard_size = resolve_shard_size(batch_size, shard_size)
    features = token_features(data, num_views, tokens_per_image(transform, vqvae))
    ranges = shard_ranges(len(data.dataset), shard_size)
    mine = [ranges[index] for index in process_shards(len(ranges), process_index, num_processes)]
    os.makedirs(shard_dir, exist_ok=True)
    files = [shard_file(shard_dir, start, end) for start, end in mine]
    todo = [(rows, path) for rows, path in zip(mine, files) if not is_finished_shard(path, rows[1] - rows[0], features)]
    if mine:
        logger.info(f"process {process_index}/{num_processes}: pre-tokenizing rows {mine[0][0]}-{mine[-1][1]} "
                    f"({len(mine)} of {len(ranges)} shards, {len(mine) - len(todo)} already finished) on {device}")
    if not todo:
        return files
    vqvae = vqvae.to(device).eval()
    rows_of = data.dataset.with_format(None)
    other_columns = [name for name in features if name != TOKEN_IDS_COLUMN]

    @torch.no_grad()
    def tokenize_batch(batch: dict) -> np.ndarray:  # -> (B, K, N) int32
        views = []
        for view in range(num_views):
            pixels = torch.stack([transform(image, index, view) for image, index
                                  in zip(batch[data.image_column], batch[SAMPLE_INDEX_COLUMN])])
            views.append(vqvae.tokenize(pixels.to(device)).cpu())
        return torch.stack(views, dim=1).numpy().astype(np.int32)

    for (start, end), path in logging.tqdm(todo, desc=f"pre-tokenizing {num_views} views per image (shards)",
                                           disable=process_index != 0):

        def write(writer: ArrowWriter, start=start, end=end) -> None:
            for first in range(start, end, batch_size):
                batch = rows_of[first:min(first + batch_size, end)]
                writer.write_batch({**{name: batch[name] for name in other_columns},
                                    TOKEN_IDS_COLUMN: tokenize_batch(batch)})

        write_atomically(path, features, write)
    return files


def combine_shards(shard_files: list[str], cache_file: str, features: datasets.Features,
                   record_batch_rows: int = COMBINED_RECORD_BATCH_ROWS) -> int:
    """Concatenate the shards, in order, into `cache_file` (atomically) with record batches of
    `record_batch_rows` rows whatever the shard boundaries; returns the number of rows."""
    missing = [path for path in shard_files if not os.path.isfile(path)]
    if missing:
        raise ValueError(f"`pretokenize_cache_dir` must be a folder every process sees: {len(missing)} shard files "
                         f"are missing, e.g. {missing[0]}")
    table = pa.concat_tables([read_arrow(path) for path in shard_files])  # memory-mapped, no copy

    def write(writer: ArrowWriter) -> None:
        for offset in range(0, table.num_rows, record_batch_rows):
            writer.write_table(table.slice(offset, record_batch_rows), record_batch_rows)

    write_atomically(cache_file, features, write)
    return table.num_rows


def wait_for_everyone() -> None:
    """Accelerate's barrier over all processes (a no-op in a single process)."""
    from accelerate import PartialState

    PartialState().wait_for_everyone()


def pretokenize(data: ImageData, vqvae: MageVQModel, transform: MageImageTransform, num_views: int,
                cache_dir: str, data_id: str, batch_size: int = 256, device: torch.device | str = "cpu", *,
                process_index: int = 0, num_processes: int = 1, shard_size: int | None = None,
                barrier: Callable[[], object] | None = None) -> datasets.Dataset:
    """Dataset with `image_token_ids` (K, N) int32 per image, `sample_index` and the label column (if any),
    cached under `cache_dir` by a key over the data, the transform, K and the tokenizer weights.

    Call it in every one of `num_processes` processes (`process_index` = the global rank) with the same
    arguments but `device`: each tokenizes its block of shards (see `tokenize_shards`), then, after `barrier`
    (default: Accelerate's `PartialState().wait_for_everyone()`), process 0 combines them into the cache and
    removes the shard folder, and after a second barrier all processes read the cache. `cache_dir` must be on
    a filesystem every process sees. An existing cache is read as is.
    """
    if num_views < 1:
        raise ValueError(f"`pretokenize_views` must be >= 1, got {num_views}")
    barrier = barrier or wait_for_everyone
    os.makedirs(cache_dir, exist_ok=True)
    key = cache_key(data_id, transform, num_views, vqvae)
    cache_file, shard_dir = cache_paths(cache_dir, key)
    if os.path.isfile(cache_file):
        logger.info(f"using pre-tokenized cache {cache_file}")
    else:
        tokenize_shards(data, vqvae, transform, num_views, shard_dir, batch_size, device,
                        process_index=process_index, num_processes=num_processes, shard_size=shard_size)
    barrier()  # every process, even one that found the cache, so that none waits alone
    if process_index == 0 and not os.path.isfile(cache_file):
        ranges = shard_ranges(len(data.dataset), resolve_shard_size(batch_size, shard_size))
        files = [shard_file(shard_dir, start, end) for start, end in ranges]
        features = token_features(data, num_views, tokens_per_image(transform, vqvae))
        rows = combine_shards(files, cache_file, features)
        shutil.rmtree(shard_dir)  # ours: the cache now holds every row
        logger.info(f"combined {len(files)} shards ({rows} rows) into {cache_file}; removed {shard_dir}")
    barrier()
    return datasets.Dataset.from_file(cache_file)
