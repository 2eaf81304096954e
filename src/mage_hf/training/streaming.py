"""Streaming image data for pre-training: images read on the fly as a `datasets.IterableDataset`, for data that
does not fit one disk or one memory.

The pipeline, per process:

1. the source stream, unshuffled and unsplit, with a `sample_index` given to every row where it is read: the row's
   position in the stream (an `.npz`, a `save_to_disk` folder, parquet files, whose footers give the shard
   lengths, or any one-shard stream), else `shard * 2**32 + row in shard` (e.g. webdataset `.tar` shards, whose
   lengths are unknown up front). Either way it does not depend on the shuffle or on the number of processes, and
   it keys the crops exactly as in the map-style path (`transforms.py`);
2. pass (epoch) `p`: `shuffle(seed, buffer_size)` with `set_epoch(p)` (shard order and buffer seeded by seed and
   `p`, the same on every process), the data-loader worker's share of the shards, then
   `datasets.distributed.split_dataset_by_node` (whole shards per process when the number of shards is a
   multiple of the number of processes, else every process reads every shard and keeps one row in
   `world_size`);
3. each row -> `PixelBatchTransform` with `epoch = p` (draw `p * views + v`), the map-style transform.

A process's stream never ends (pass after pass), so processes whose parts differ in length never wait for each
other at the end of a pass; the run ends at `max_steps`. Checkpoints hold each worker's position (pass, rows
read); a resumed run re-reads, without decoding images, the rows of that pass up to there (the shuffle buffer
must be refilled as it was) and continues: the same batches, crops and (with the Trainer's restored RNG) masks
as the uninterrupted run.
"""

from __future__ import annotations

import copy
import functools
import io
import itertools
import json
import os
from dataclasses import dataclass

import datasets
import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch
from accelerate.data_loader import prepare_data_loader
from datasets.distributed import split_dataset_by_node
from PIL import Image
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .data import _IMAGE_COLUMN_GUESSES, _LABEL_COLUMN_GUESSES, SAMPLE_INDEX_COLUMN, PixelBatchTransform
from .pretraining_trainer import MagePretrainingTrainer

logger = logging.get_logger(__name__)

# `sample_index` of row `r` of shard `s` of a streamed source whose shard lengths are unknown: `s * stride + r`
# (a shard, i.e. one data file, holds fewer than 2**32 rows).
SHARD_INDEX_STRIDE = 2**32
STREAM_POSITION_KEY = "stream_position"
STREAM_STATE_NAME = "stream_state_{}.json"
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".tar": "webdataset", ".arrow": "arrow"}


@dataclass
class StreamingImageData:
    """An unshuffled, unsplit stream: rows hold the image column (raw: PIL, uint8 array or `{"bytes", "path"}`),
    `sample_index` and, when labelled, the label column."""

    dataset: datasets.IterableDataset
    image_column: str
    label_column: str | None
    class_names: list[str] | None


@functools.lru_cache(maxsize=2)
def _npz_arrays(path: str, split: str, max_samples: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as arrays:
        labels = arrays[f"y_{split}"][:max_samples] if f"y_{split}" in arrays.files else None
        return arrays[f"x_{split}"][:max_samples], labels


def _npz_rows(ranges: list[tuple[int, int]], path: str, split: str, max_samples: int | None):
    images, labels = _npz_arrays(path, split, max_samples)
    for start, stop in ranges:
        for index in range(start, stop):
            row = {"image": images[index], SAMPLE_INDEX_COLUMN: index}
            if labels is not None:
                row["label"] = int(labels[index])
            yield row


def _shard_rows(shards: list[int], source: datasets.IterableDataset, offsets: list[int] | None = None):
    """Rows of `source`'s `shards`, each with its `sample_index`: the shard's first global row `offsets[i]` (for
    `shards[i]`, when the shard lengths are known) + row, else `shard * SHARD_INDEX_STRIDE + row`."""
    for position, shard in enumerate(shards):
        start = offsets[position] if offsets is not None else shard * SHARD_INDEX_STRIDE
        for row_in_shard, row in enumerate(source.shard(num_shards=source.num_shards, index=shard)):
            yield {**row, SAMPLE_INDEX_COLUMN: start + row_in_shard}


def _load_npz_stream(path: str, split: str, max_samples: int | None, num_shards: int) -> StreamingImageData:
    with np.load(path, allow_pickle=False) as arrays:
        if f"x_{split}" not in arrays.files:
            raise ValueError(f"`train_data` {path!r} has no array 'x_{split}' for split {split!r}; "
                             f"arrays: {sorted(arrays.files)}")
        class_names = [str(name) for name in arrays["class_names"]] if "class_names" in arrays.files else None
    images, labels = _npz_arrays(os.path.abspath(path), split, max_samples)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"`train_data` {path!r}: 'x_{split}' must be non-empty uint8 (N, H, W) or (N, H, W, 3), "
                         f"got {images.dtype} {images.shape}")
    if labels is not None and class_names is None:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    bounds = np.linspace(0, len(images), min(num_shards, len(images)) + 1).astype(int)
    ranges = [(int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:])]
    gen_kwargs = {"ranges": ranges, "path": os.path.abspath(path), "split": split, "max_samples": max_samples}
    dataset = datasets.IterableDataset.from_generator(_npz_rows, gen_kwargs=gen_kwargs)
    return StreamingImageData(dataset, "image", "label" if labels is not None else None,
                              class_names if labels is not None else None)


def _stream_loader_arguments(source: str, split: str) -> dict | None:
    """`load_dataset` / `load_dataset_builder` arguments streaming `source` (None: a `save_to_disk` folder)."""
    if os.path.isdir(source):
        if any(os.path.isfile(os.path.join(source, name)) for name in ("dataset_dict.json", "state.json")):
            return None
        suffixes = sorted({os.path.splitext(name)[1] for name in os.listdir(source)} & set(_DATA_FILE_BUILDERS))
        if len(suffixes) == 1:
            pattern = os.path.join(source, f"*{suffixes[0]}")
            return {"path": _DATA_FILE_BUILDERS[suffixes[0]], "data_files": {split: pattern}}
        return {"path": "imagefolder", "data_dir": source}
    suffix = os.path.splitext(source)[1]
    if suffix in _DATA_FILE_BUILDERS:
        return {"path": _DATA_FILE_BUILDERS[suffix], "data_files": {split: source}}
    return {"path": source}


def _open_stream(arguments: dict, source: str, split: str) -> datasets.IterableDataset:
    try:
        return datasets.load_dataset(**arguments, split=split, streaming=True)
    except Exception as error:  # noqa: BLE001 - any loader failure means the same thing to the user
        raise ValueError(
            f"`train_data` {source!r} could not be streamed as a `datasets` name or data files: {error}"
        ) from error


def _parquet_shard_lengths(arguments: dict, split: str, num_shards: int) -> list[int] | None:
    """Rows per shard of a parquet stream, read from the files' footers (None when the stream's shards are not
    one parquet file each, or a footer cannot be read)."""
    try:
        builder = datasets.load_dataset_builder(**arguments)
        files = list(builder.config.data_files[split]) if builder.config.data_files else []
        if builder.name != "parquet" or len(files) != num_shards:
            return None
        lengths = []
        for path in files:
            with fsspec.open(path, "rb") as handle:
                lengths.append(pq.ParquetFile(handle).metadata.num_rows)
        return lengths
    except Exception as error:  # noqa: BLE001 - any failure: fall back to (shard, row) keys
        logger.info(f"parquet footers not read ({error}); sample_index = shard * {SHARD_INDEX_STRIDE} + row")
        return None


def _pick(features: datasets.Features, requested: str | None, guesses, feature_type, argument: str) -> str | None:
    if requested is not None:
        if requested not in features:
            raise ValueError(f"`{argument}` {requested!r} is not a column; columns: {list(features)}")
        return requested
    typed = [name for name, feature in features.items() if isinstance(feature, feature_type)]
    named = [name for name in guesses if name in features]
    return (typed or named or [None])[0]


def load_streaming_image_data(
    source: str,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    npz_shards: int = 16,
) -> StreamingImageData:
    """`source` as a stream: an `.npz` (`npz_shards` row ranges), a `save_to_disk` folder, a folder or glob of
    `.parquet` / webdataset `.tar` / `.arrow` files, an image folder, or a `datasets` name
    (`load_dataset(..., streaming=True)`). `max_samples`: the first N rows (`.npz` and `save_to_disk` only)."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"`max_train_samples` must be positive, got {max_samples}")
    if source.endswith(".npz"):
        if not os.path.isfile(source):
            raise ValueError(f"`train_data` {source!r} does not exist (expected an .npz file with `x_{split}`)")
        return _load_npz_stream(source, split, max_samples, npz_shards)
    arguments = _stream_loader_arguments(source, split)
    if arguments is None:
        from .data import load_image_data

        data = load_image_data(source, split, image_column, label_column, max_samples)  # adds `sample_index`
        dataset = data.dataset
        if isinstance(dataset.features[data.image_column], datasets.Image):
            dataset = dataset.cast_column(data.image_column, datasets.Image(decode=False))
        dataset = dataset.to_iterable_dataset(num_shards=min(npz_shards, len(dataset)))
        return StreamingImageData(dataset, data.image_column, data.label_column, data.class_names)
    streamed = _open_stream(arguments, source, split)
    if max_samples is not None:
        raise ValueError("`max_train_samples` with `--streaming` needs an .npz or a `save_to_disk` folder (a stream's "
                         "length is unknown); leave it unset")
    features = streamed.features or datasets.Features()
    image_column = _pick(features, image_column, _IMAGE_COLUMN_GUESSES, datasets.Image, "image_column")
    if image_column is None:
        raise ValueError(f"no image column found in {list(features)}; pass `image_column`")
    label_column = _pick(features, label_column, _LABEL_COLUMN_GUESSES, datasets.ClassLabel, "label_column")
    keep = [image_column] + ([label_column] if label_column else [])
    streamed = streamed.select_columns(keep)
    if isinstance(features[image_column], datasets.Image):
        # Rows keep the encoded bytes until the transform: skipping rows on resume and the shuffle buffer stay cheap.
        streamed = streamed.cast_column(image_column, datasets.Image(decode=False))
    label_feature = features.get(label_column)
    class_names = list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel) else None
    if label_column and class_names is None:
        raise ValueError(f"`label_column` {label_column!r} must be a ClassLabel when streaming (its classes must be "
                         "known before reading the stream)")
    lengths = _parquet_shard_lengths(arguments, split, streamed.num_shards) if streamed.num_shards > 1 else None
    offsets = [0, *np.cumsum(lengths[:-1]).tolist()] if lengths else None
    gen_kwargs = {"shards": list(range(streamed.num_shards)), "source": streamed}
    if offsets is not None:
        gen_kwargs["offsets"] = offsets
    dataset = datasets.IterableDataset.from_generator(_shard_rows, gen_kwargs=gen_kwargs)
    key = "the row's position in the stream" if offsets is not None or streamed.num_shards == 1 else \
        f"shard * {SHARD_INDEX_STRIDE} + row in shard"
    logger.info(f"streaming {source!r} (split {split!r}): {streamed.num_shards} shards, sample_index = {key}")
    return StreamingImageData(dataset, image_column, label_column, class_names)


def decode_image(image):
    """A streamed image: `{"bytes", "path"}` (an undecoded `datasets.Image`) -> PIL; PIL or arrays unchanged."""
    if isinstance(image, dict):
        return Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image["path"])
    return image


def rows_to_skip(batches: int, batch_size: int, role: int, num_roles: int) -> int:
    """Rows that worker role `role` of `num_roles` produced in the first `batches` batches (the data loader takes
    batches from its workers in turn: role r makes batches r, r + num_roles, ...)."""
    return max(0, -(-(batches - role) // num_roles)) * batch_size


def stream_state_path(checkpoint: str, process_index: int) -> str:
    return os.path.join(checkpoint, STREAM_STATE_NAME.format(process_index))


def read_stream_state(checkpoint: str, process_index: int, num_workers: int, num_processes: int,
                      batch_size: int) -> dict[int, tuple[int, int]] | None:
    """The worker roles' stream positions saved in `checkpoint` by this process (see
    `StreamingPretrainingTrainer`), or None when absent or saved with other loader settings."""
    path = stream_state_path(checkpoint, process_index)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        state = json.load(handle)
    if (state["num_workers"], state["num_processes"], state["batch_size"]) != (num_workers, num_processes, batch_size):
        logger.warning(f"{path} was saved with other workers / processes / batch size: re-reading the stream instead")
        return None
    return {int(role): (int(epoch), int(rows)) for role, (epoch, rows) in state["positions"].items()}


class StreamingPretrainDataset(torch.utils.data.IterableDataset):
    """This process's endless stream of training examples, pass after pass (see the module docstring): each has
    `pixel_values` (3, S, S) or (V, 3, S, S), `sample_index` (), the label when `transform` has a label column,
    and `stream_position` (3,): (worker role, pass, rows of the pass read), which the trainer checkpoints.

    Data-loader workers are given roles: role r reads the shards `r mod num_workers` (`IterableDataset.shard`),
    split between processes. On resume worker j plays role `(j + skip_batches) mod num_workers`, so the loader's
    turn-taking continues where the interrupted run stopped.

    Args:
        data: the unsplit stream.
        transform: the map-style batch transform, applied row by row with `epoch` = the pass.
        process_index / num_processes: this process's place (`split_dataset_by_node`).
        seed / buffer_size: the shuffle (`IterableDataset.shuffle`), re-seeded per pass with `set_epoch`.
        batch_size: per-process batch size.
        skip_batches: batches this process already trained on (resume).
        positions: per role, (pass, rows of it read) after the last batch trained on, saved in the checkpoint:
            a role restarts that pass and skips those rows. Without them, a role skips every row it produced
            since the start. Skipped rows are read, never decoded.
    """

    def __init__(self, data: StreamingImageData, transform: PixelBatchTransform, process_index: int = 0,
                 num_processes: int = 1, seed: int = 0, buffer_size: int = 1000, batch_size: int = 1,
                 skip_batches: int = 0, positions: dict[int, tuple[int, int]] | None = None):
        self.data = data
        self.transform = transform
        self.process_index = process_index
        self.num_processes = num_processes
        self.seed = seed
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.skip_batches = skip_batches
        self.positions = positions

    def pass_stream(self, epoch: int, role: int = 0, num_roles: int = 1) -> datasets.IterableDataset:
        """Pass `epoch` of the rows of worker role `role` in this process (raw, with `sample_index`)."""
        stream = self.data.dataset.shuffle(seed=self.seed, buffer_size=self.buffer_size)
        if num_roles > 1:
            stream = stream.shard(num_shards=num_roles, index=role, contiguous=False)
        stream = split_dataset_by_node(stream, rank=self.process_index, world_size=self.num_processes)
        stream.set_epoch(epoch)  # a fresh object per pass: workers never share its epoch counter
        return stream

    def start(self, role: int, num_roles: int) -> tuple[int, int]:
        """(pass, rows of it to skip) where role `role` resumes."""
        if self.positions is not None and role in self.positions:
            return self.positions[role]
        return 0, rows_to_skip(self.skip_batches, self.batch_size, role, num_roles)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id, num_roles = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        role = (worker_id + self.skip_batches) % num_roles
        first_pass, to_skip = self.start(role, num_roles)
        transform = copy.copy(self.transform)  # its `epoch` is this worker's
        for epoch in itertools.count(first_pass):
            transform.epoch = epoch
            rows = 0
            # `iter` rather than `__iter__`: inside a loader worker the latter would split the shards again.
            for batch in self.pass_stream(epoch, role, num_roles).iter(batch_size=1):
                rows += 1
                if to_skip:
                    to_skip -= 1
                    continue
                batch[self.data.image_column] = [decode_image(batch[self.data.image_column][0])]
                example = {key: value[0] for key, value in transform(batch).items()}
                example[SAMPLE_INDEX_COLUMN] = torch.tensor(batch[SAMPLE_INDEX_COLUMN][0], dtype=torch.long)
                example[STREAM_POSITION_KEY] = torch.tensor([role, epoch, rows], dtype=torch.long)
                yield example
            if rows == 0:
                raise ValueError(f"process {self.process_index} (worker role {role}) has no rows to stream: fewer "
                                 f"shards ({self.data.dataset.num_shards}) than data-loader workers")


class StreamingPretrainingTrainer(MagePretrainingTrainer):
    """`MagePretrainingTrainer` whose training loader reads a `StreamingPretrainDataset` as it is, in every process,
    and whose checkpoints hold each process's stream position (`stream_state_<process>.json`).

    The stream is already split by process. Accelerate's handling of an iterable dataset would split it again: by
    default it dispatches batches read on process 0 only (`dispatch_batches`), and with `dispatch_batches=False` it
    shards the dataset once more (`IterableDatasetShard`), so each process would see 1/world_size of its part. The
    loader here is only moved to the device (Accelerate's `DataLoaderShard` for one process).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stream_positions = dict(getattr(self.train_dataset, "positions", None) or {})

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        if not isinstance(self.train_dataset, StreamingPretrainDataset):
            return super().get_train_dataloader()
        args = self.args
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
            prefetch_factor=args.dataloader_prefetch_factor if args.dataloader_num_workers > 0 else None,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            # Its own generator: creating the iterator must not draw from the global RNG the masks come from
            # (a resumed run creates it after restoring that RNG, the uninterrupted run before its first step).
            generator=torch.Generator().manual_seed(args.seed),
        )
        return prepare_data_loader(loader, args.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False, non_blocking=args.accelerator_config.non_blocking)

    def training_step(self, model, inputs, *args, **kwargs):
        position = inputs.pop(STREAM_POSITION_KEY, None)  # (B, 3); one batch comes from one worker role
        if position is not None:
            role, epoch, rows = (int(value) for value in position[-1])
            self._stream_positions[role] = (epoch, rows)
        return super().training_step(model, inputs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        num_workers = max(1, self.args.dataloader_num_workers)
        if not isinstance(self.train_dataset, StreamingPretrainDataset) or len(self._stream_positions) < num_workers:
            return  # a role without a batch yet: the resumed run re-reads the stream instead
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        state = {"num_workers": num_workers, "num_processes": self.args.world_size,
                 "batch_size": self._train_batch_size, "positions": self._stream_positions}
        path = stream_state_path(folder, self.args.process_index)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(path + ".tmp", path)
