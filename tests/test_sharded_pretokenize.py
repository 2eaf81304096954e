"""Sharded pre-tokenization (`mage_hf.training.pretokenize`): every process tokenizes its own block of shards,
process 0 combines them into the one cache, byte for byte the single-process cache; a killed run resumes
without redoing finished shards; `examples/pretrain.py --pretokenize` under a 2-process `accelerate launch`
writes the 1-process cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from mage_hf import MageVQModel
from mage_hf.training.data import TOKEN_IDS_COLUMN, load_image_data
from mage_hf.training.pretokenize import (
    cache_key,
    cache_paths,
    combine_shards,
    pretokenize,
    process_shards,
    shard_file,
    shard_ranges,
    token_features,
    tokenize_shards,
)
from mage_hf.training.transforms import ImageTransformConfig, MageImageTransform

from conftest import free_port, tiny_config_kwargs
from test_examples_pretrain import EXAMPLE, model_config_file, pretrain_args, run_pretrain, vqvae_dir  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

NUM_ROWS, NUM_VIEWS, BATCH_SIZE, SHARD_SIZE, DATA_ID = 20, 2, 4, 4, "fmnist-20"  # 5 shards of one batch


@pytest.fixture(scope="module")
def setup(data_dir):
    """(data, tokenizer, transform) shared by the in-process tests: 20 Fashion-MNIST images, 16 px, 8x8 tokens."""
    torch.manual_seed(0)
    vqvae = MageVQModel(**tiny_config_kwargs()["vqvae_config"]).eval()
    data = load_image_data(str(data_dir / "fashion_mnist_5k.npz"), max_samples=NUM_ROWS)
    return data, vqvae, MageImageTransform(ImageTransformConfig(image_size=16, seed=7))


@pytest.fixture(scope="module")
def single_process_cache(setup, tmp_path_factory) -> Path:
    data, vqvae, transform = setup
    cache_dir = tmp_path_factory.mktemp("single")
    dataset = pretokenize(data, vqvae, transform, NUM_VIEWS, str(cache_dir), DATA_ID, BATCH_SIZE, shard_size=SHARD_SIZE)
    assert dataset.features[TOKEN_IDS_COLUMN].shape == (NUM_VIEWS, 64) and len(dataset) == NUM_ROWS
    return Path(dataset.cache_files[0]["filename"])


def run_as_processes(num_processes: int, call) -> list:
    """`call(process_index, barrier)` in one thread per simulated process, meeting at a shared barrier."""
    barrier, results, errors = threading.Barrier(num_processes, timeout=120), [None] * num_processes, []

    def target(index):
        try:
            results[index] = call(index, barrier.wait)
        except BaseException as error:  # noqa: BLE001 - re-raised below in the test's thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(index,)) for index in range(num_processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def count_tokenized_images(monkeypatch, vqvae) -> list[int]:
    """Patch `vqvae.tokenize` to record how many images each call tokenizes."""
    calls, tokenize = [], vqvae.tokenize
    monkeypatch.setattr(vqvae, "tokenize", lambda pixels: calls.append(len(pixels)) or tokenize(pixels))
    return calls


def test_shards_are_fixed_by_the_data_and_split_into_contiguous_blocks():
    ranges = shard_ranges(10, 4)
    assert ranges == [(0, 4), (4, 8), (8, 10)]
    for num_processes in (1, 2, 3, 5):
        blocks = [list(process_shards(len(ranges), rank, num_processes)) for rank in range(num_processes)]
        assert sum(blocks, []) == [0, 1, 2]  # every shard once, in order, each block contiguous
    with pytest.raises(ValueError, match="process_index"):
        process_shards(3, 2, 2)


@pytest.mark.parametrize("num_processes", [2, 3])
def test_simulated_processes_write_the_single_process_cache(setup, single_process_cache, tmp_path, num_processes):
    data, vqvae, transform = setup
    datasets_ = run_as_processes(num_processes, lambda index, barrier: pretokenize(
        data, vqvae, transform, NUM_VIEWS, str(tmp_path), DATA_ID, BATCH_SIZE, shard_size=SHARD_SIZE,
        process_index=index, num_processes=num_processes, barrier=barrier))
    cache_file = tmp_path / single_process_cache.name  # the key does not depend on the number of processes
    assert cache_file.read_bytes() == single_process_cache.read_bytes()
    assert {Path(d.cache_files[0]["filename"]) for d in datasets_} == {cache_file}
    assert sorted(os.listdir(tmp_path)) == [cache_file.name]  # the shard folder is removed after combining
    assert datasets_[1][7][TOKEN_IDS_COLUMN] == datasets_[0][7][TOKEN_IDS_COLUMN]


def test_combined_file_does_not_depend_on_the_shard_boundaries(setup, tmp_path):
    data, vqvae, transform = setup
    features = token_features(data, NUM_VIEWS, 64)
    combined = []
    for name, shard_size, num_processes in [("two", 4, 2), ("one", 12, 1)]:
        shard_dir = str(tmp_path / name)
        files = [f for rank in range(num_processes) for f in tokenize_shards(
            data, vqvae, transform, NUM_VIEWS, shard_dir, BATCH_SIZE, process_index=rank,
            num_processes=num_processes, shard_size=shard_size)]
        combine_shards(files, str(tmp_path / f"{name}.arrow"), features, record_batch_rows=3)
        combined.append((tmp_path / f"{name}.arrow").read_bytes())
    assert combined[0] == combined[1]


def test_killed_run_resumes_without_redoing_finished_shards(setup, single_process_cache, tmp_path, monkeypatch):
    data, vqvae, transform = setup
    # A 2-process run killed while process 1 wrote its first shard: process 0's block (shards 0-1) is finished,
    # process 1 left a half-written temporary file; and a truncated final file (as a lost disk write leaves).
    cache_file, shard_dir = cache_paths(str(tmp_path), cache_key(DATA_ID, transform, NUM_VIEWS, vqvae))
    finished = tokenize_shards(data, vqvae, transform, NUM_VIEWS, shard_dir, BATCH_SIZE, process_index=0,
                               num_processes=2, shard_size=SHARD_SIZE)
    assert [Path(f).name for f in finished] == ["rows-000000000000-000000000004.arrow",
                                                 "rows-000000000004-000000000008.arrow"]
    stamps = [os.stat(f).st_mtime_ns for f in finished]
    Path(shard_dir, ".rows-000000000008-000000000012.arrow.x1y2.tmp").write_bytes(b"half a shard")
    truncated = Path(shard_file(shard_dir, 12, 16))
    truncated.write_bytes(Path(finished[0]).read_bytes()[:-200])
    # The rerun uses 1 process (the world size changed) and tokenizes only rows 8-20 (3 shards of one batch).
    calls = count_tokenized_images(monkeypatch, vqvae)
    tokenize_shards(data, vqvae, transform, NUM_VIEWS, shard_dir, BATCH_SIZE, shard_size=SHARD_SIZE)
    assert [os.stat(f).st_mtime_ns for f in finished] == stamps
    assert calls == [BATCH_SIZE] * NUM_VIEWS * 3, calls
    pretokenize(data, vqvae, transform, NUM_VIEWS, str(tmp_path), DATA_ID, BATCH_SIZE, shard_size=SHARD_SIZE)
    assert len(calls) == NUM_VIEWS * 3  # all shards finished: only the combine step ran
    assert Path(cache_file).read_bytes() == single_process_cache.read_bytes()
    assert not os.path.exists(shard_dir)  # stale temporary file included


def test_two_process_accelerate_launch_writes_the_one_process_cache(monkeypatch, tmp_path, data_dir, vqvae_dir,
                                                                     model_config_file):
    # 32 images in tokenizer batches of 2 = 2 shards of 8 batches: one per process.
    args = dict(max_train_samples=32, per_device_train_batch_size=8, max_steps=1, pretokenize=True,
                pretokenize_views=2, pretokenize_batch_size=2, log_level="info", log_level_replica="info")
    run_pretrain(monkeypatch, *pretrain_args(data_dir, vqvae_dir, model_config_file, tmp_path / "one", **args))
    command = [
        shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate", "launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--main_process_port", free_port(),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(EXAMPLE), *pretrain_args(data_dir, vqvae_dir, model_config_file, tmp_path / "two", **args),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank, rows in [(0, "0-16"), (1, "16-32")]:
        assert f"process {rank}/2: pre-tokenizing rows {rows} (1 of 2 shards" in result.stdout, result.stdout[-3000:]
    [one] = (tmp_path / "one" / "pretokenized").iterdir()
    two = sorted((tmp_path / "two" / "pretokenized").iterdir())
    assert [path.name for path in two] == [one.name]  # same key, and no shard folder left
    assert two[0].read_bytes() == one.read_bytes()


@pytest.mark.slow  # three interpreter start-ups: 25-50 s on a shared 2-core machine
def test_scaling_benchmark_quick_mode_prints_both_rows():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "pretokenize_scaling.py"
    result = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all(row.endswith("| yes |") for row in rows), result.stdout
