"""`examples/pretrain.py --streaming`: the stream's crops are the map-style crops, processes read disjoint parts of
it under `accelerate launch`, a resumed run repeats the uninterrupted one, and bad combinations are refused."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mage_hf.training.data import PixelBatchTransform, load_image_data
from mage_hf.training.streaming import (
    SHARD_INDEX_STRIDE,
    StreamingPretrainDataset,
    load_streaming_image_data,
    read_stream_state,
    rows_to_skip,
)
from mage_hf.training.transforms import ImageTransformConfig, MageImageTransform

from conftest import free_port
from test_examples_pretrain import (  # noqa: F401  (pytest fixtures, shared)
    logged_losses,
    model_config_file,
    pretrain_args,
    run_pretrain,
    vqvae_dir,
)

pytestmark = pytest.mark.usefixtures("single_thread")

WORKER = Path(__file__).resolve().parent / "streaming_worker.py"


def _transform(num_views: int = 1, label_column: str | None = "label") -> PixelBatchTransform:
    config = ImageTransformConfig(image_size=16, resize_mode="pad", seed=3)
    return PixelBatchTransform(MageImageTransform(config), "image", label_column, num_views, "class_labels")


def _stream(data, process_index=0, num_processes=1, **kwargs) -> StreamingPretrainDataset:
    kwargs = {"seed": 0, "buffer_size": 8, "batch_size": 4, **kwargs}
    return StreamingPretrainDataset(data, _transform(), process_index, num_processes, **kwargs)


def test_streamed_crops_equal_map_style_crops(data_dir):
    # Two views, past the first pass: draw 2 * pass + view of sample i, whichever process reads it.
    path = data_dir / "fashion_mnist_5k.npz"
    mapped = load_image_data(str(path), max_samples=24).dataset
    map_transform = _transform(num_views=2)
    streamed = load_streaming_image_data(str(path), max_samples=24, npz_shards=4)
    stream = StreamingPretrainDataset(streamed, _transform(num_views=2), 1, 2, seed=0, buffer_size=8, batch_size=4)
    examples = list(itertools.islice(iter(stream), 24))  # 12 rows per pass on process 1: two passes
    passes = [sorted(int(e["sample_index"]) for e in examples[start:start + 12]) for start in (0, 12)]
    assert passes[0] == passes[1]  # the same 12 rows (process 1's part), read again in pass 1
    for position, example in enumerate(examples):
        map_transform.epoch = position // 12
        index = int(example["sample_index"])
        expected = map_transform({**mapped[index:index + 1]})
        assert torch.equal(example["pixel_values"], expected["pixel_values"][0]), (position, index)
        assert int(example["class_labels"]) == int(expected["class_labels"][0])


@pytest.mark.parametrize("num_shards", [4, 3])  # 3 shards over 2 processes: each keeps every other row
def test_processes_read_disjoint_parts_covering_every_pass(data_dir, num_shards):
    data = load_streaming_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=24, npz_shards=num_shards)
    passes = []
    for process in range(2):
        rows = [int(e["sample_index"]) for e in itertools.islice(iter(_stream(data, process, 2)), 36)]
        passes.append((rows[:12], rows[12:24], rows[24:]))  # 12 rows per process and pass
    for pass_index in range(3):
        first, second = passes[0][pass_index], passes[1][pass_index]
        assert sorted(first + second) == list(range(24)), (pass_index, first, second)
    assert passes[0][0] != passes[0][1]  # each pass is shuffled anew


def test_resume_skips_the_rows_of_the_batches_already_trained_on(data_dir):
    data = load_streaming_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=24, npz_shards=4)
    full = [int(e["sample_index"]) for e in itertools.islice(iter(_stream(data)), 40)]
    resumed = [int(e["sample_index"]) for e in itertools.islice(iter(_stream(data, skip_batches=7)), 12)]
    assert resumed == full[28:40]  # 7 batches of 4, across the first pass boundary
    # A saved position: pass 1, its first 16 rows read (28 = 24 rows of pass 0 + 4 of pass 1, then 12 more).
    from_position = _stream(data, skip_batches=7, positions={0: (1, 4)})
    assert [int(e["sample_index"]) for e in itertools.islice(iter(from_position), 12)] == full[28:40]
    # 2 loader workers take turns: of the first 5 batches, role 0 made 3 and role 1 made 2.
    assert [rows_to_skip(5, 4, role, 2) for role in (0, 1)] == [12, 8]


def test_save_to_disk_folder_streams_with_row_numbers(tmp_path, data_dir):
    load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=10).dataset.remove_columns(
        "sample_index").save_to_disk(tmp_path / "saved")
    data = load_streaming_image_data(str(tmp_path / "saved"), npz_shards=2)
    assert data.label_column == "label" and data.class_names[7] == "Sneaker"
    assert sorted(int(row["sample_index"]) for row in data.dataset) == list(range(10))


def test_parquet_shards_stream_with_global_row_positions(tmp_path, data_dir):
    mapped = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=10).dataset
    mapped = mapped.remove_columns("sample_index")
    (tmp_path / "parquet").mkdir()
    for shard, rows in enumerate([range(0, 6), range(6, 10)]):  # unequal shards: offsets from the footers
        mapped.select(rows).to_parquet(tmp_path / "parquet" / f"train-{shard}.parquet")
    data = load_streaming_image_data(str(tmp_path / "parquet"))
    assert data.dataset.num_shards == 2 and data.class_names[0] == "T-shirt/top"
    rows = sorted(data.dataset, key=lambda row: row["sample_index"])
    assert [row["sample_index"] for row in rows] == list(range(10))
    assert [row["label"] for row in rows] == mapped["label"]
    stream = StreamingPretrainDataset(data, _transform(), seed=0, buffer_size=4, batch_size=2)
    example = next(iter(stream))
    expected = _transform()({**load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=10).dataset[
        int(example["sample_index"]):int(example["sample_index"]) + 1]})
    assert torch.equal(example["pixel_values"], expected["pixel_values"][0])


def test_webdataset_shards_stream_with_shard_keys(tmp_path, data_dir):
    # A webdataset's shard lengths are unknown up front: sample_index = shard * 2**32 + row in shard.
    import io
    import tarfile

    from PIL import Image

    images = np.load(data_dir / "fashion_mnist_5k.npz")["x_train"][:5]
    (tmp_path / "wds").mkdir()
    for shard, rows in enumerate([range(0, 3), range(3, 5)]):
        with tarfile.open(tmp_path / "wds" / f"train-{shard}.tar", "w") as archive:
            for row in rows:
                buffer = io.BytesIO()
                Image.fromarray(images[row]).save(buffer, format="PNG")
                info = tarfile.TarInfo(f"{row:06d}.png")
                info.size = buffer.tell()
                buffer.seek(0)
                archive.addfile(info, buffer)
    data = load_streaming_image_data(str(tmp_path / "wds"))
    keys = sorted(int(row["sample_index"]) for row in data.dataset)
    assert keys == [0, 1, 2, SHARD_INDEX_STRIDE, SHARD_INDEX_STRIDE + 1]
    transform = _transform(label_column=None)
    transform.image_column = data.image_column  # "png", webdataset's file extension
    assert next(iter(StreamingPretrainDataset(data, transform)))["pixel_values"].shape == (3, 16, 16)


@pytest.mark.parametrize(
    "workers, save_steps, keep_stream_state",
    [
        (0, 2, True),
        (2, 3, True),  # 3 batches done: the resumed loader's first worker plays the second role
        (2, 3, False),  # no saved position (e.g. an older checkpoint): every role re-reads from the start
    ],
)
def test_killed_and_resumed_streaming_run_equals_uninterrupted_run(monkeypatch, tmp_path, data_dir, vqvae_dir,
                                                                  model_config_file, workers, save_steps,
                                                                  keep_stream_state):
    # 48 images / batch 16 = 3 batches per pass: the resumed steps cross a pass boundary.
    args = dict(streaming=True, streaming_shuffle_buffer=8, max_train_samples=48, max_steps=5,
                save_strategy="steps", save_steps=save_steps, dataloader_num_workers=workers)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, full, **args))
    checkpoint = f"checkpoint-{save_steps}"
    resumed.mkdir()
    shutil.copytree(full / checkpoint, resumed / checkpoint)  # what a run killed after that step leaves
    state = read_stream_state(str(resumed / checkpoint), 0, max(1, workers), 1, 16)
    assert state is not None and sorted(state) == list(range(max(1, workers)))
    if not keep_stream_state:
        (resumed / checkpoint / "stream_state_0.json").unlink()
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, resumed,
                                             resume_from_checkpoint="latest", **args))
    assert len(logged_losses(full)) == 5
    assert logged_losses(resumed) == logged_losses(full)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_steps": -1, "num_train_epochs": 1}, "needs `--max_steps`"),
        ({"pretokenize": True}, "`--pretokenize` cannot be used with `--streaming`"),
        ({"class_conditional": True, "train_data": "NO_LABELS"}, "`--class_conditional` needs labels"),
        ({"accelerator_config": '{"dispatch_batches": true}'}, "dispatch_batches"),
        ({"dataloader_num_workers": 17}, "`dataloader_num_workers` must be <= 16"),
        ({"train_data": "PARQUET", "max_train_samples": 8}, "`max_train_samples` with `--streaming`"),
    ],
)
def test_streaming_refusals(monkeypatch, tmp_path, data_dir, vqvae_dir, model_config_file, overrides, message):
    if overrides.get("train_data") == "NO_LABELS":
        arrays = np.load(data_dir / "fashion_mnist_5k.npz")
        np.savez(tmp_path / "unlabelled.npz", x_train=arrays["x_train"][:8])
        overrides = {**overrides, "train_data": tmp_path / "unlabelled.npz"}
    if overrides.get("train_data") == "PARQUET":
        mapped = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=4).dataset
        mapped.to_parquet(tmp_path / "a.parquet")
        overrides = {**overrides, "train_data": tmp_path / "a.parquet"}
    with pytest.raises(ValueError, match=message) as error:
        run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, tmp_path / "out",
                                                 streaming=True, **overrides))
    assert "\n" not in str(error.value)


def _launch_two_processes(data_dir, vqvae_dir, model_config_file, output, seen, **overrides) -> list[list[list[int]]]:
    """Run the streaming pre-training under `accelerate launch` on 2 CPU processes; each rank's sample indices."""
    command = [
        shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate", "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--main_process_port", free_port(),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(WORKER), *pretrain_args(data_dir, vqvae_dir, model_config_file, output, streaming=True,
                                    streaming_shuffle_buffer=8, max_train_samples=64, max_steps=3,
                                    class_conditional=True, save_strategy="steps", save_steps=2, **overrides),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "STREAMING_SEEN_DIR": str(seen)}
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 3
    return [json.loads((seen / f"rank{rank}.json").read_text()) for rank in range(2)]


# Two 2-process launches (~55 s on 2 cores): kept in the default run, the only multi-process proof of streaming.
def test_two_process_streaming_run_reads_disjoint_samples_and_resumes(tmp_path, data_dir, vqvae_dir,
                                                                      model_config_file):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    per_rank = _launch_two_processes(data_dir, vqvae_dir, model_config_file, full, tmp_path / "seen-full")
    assert all(len(steps) == 3 and all(len(batch) == 16 for batch in steps) for steps in per_rank)
    for step in range(3):
        assert not set(per_rank[0][step]) & set(per_rank[1][step]), step
    # Two steps of 2 x 16 rows are one pass over the 64 images: every image exactly once.
    first_pass = Counter(index for steps in per_rank for batch in steps[:2] for index in batch)
    assert sorted(first_pass) == list(range(64)) and set(first_pass.values()) == {1}
    # Killed after step 2: the resumed launch trains step 3 on the same batches, with the same loss.
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    assert all((resumed / "checkpoint-2" / f"stream_state_{rank}.json").is_file() for rank in range(2))
    resumed_rank = _launch_two_processes(data_dir, vqvae_dir, model_config_file, resumed, tmp_path / "seen-resumed",
                                         resume_from_checkpoint="latest")
    assert [steps[-1] for steps in resumed_rank] == [steps[-1] for steps in per_rank]
    assert logged_losses(resumed) == logged_losses(full)
