"""benchmarks/training_memory.py: its fake-tensor measurement agrees with real tensors, and its state counts."""

import importlib
import sys
from pathlib import Path

import pytest

from mage_hf import MageConfig

from conftest import tiny_config_kwargs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
training_memory = importlib.import_module("training_memory")

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fake_tensor_measurement_matches_real_tensors():
    # activations saved for backward and the tokenizer's peak, per image and fixed, on the tiny model
    assert training_memory.check_against_real_tensors() < 1e-2


def test_activations_grow_with_the_batch_and_the_tokenizer_peak_is_counted():
    measured = training_memory.measure(MageConfig(**tiny_config_kwargs()))
    assert measured["activations"][0] > 0 and measured["tokenizer_peak"][0] > 0


def test_fsdp2_shards_the_states_but_keeps_the_tokenizer_whole():
    counts = training_memory.count_parameters(MageConfig(**tiny_config_kwargs()))
    assert counts.trainable < counts.total and 0 < counts.root < counts.total
    ddp = training_memory.state_bytes(counts, "ddp", 8)
    assert ddp == {"parameters": 4 * counts.total, "gradients": 8 * counts.trainable, "adamw": 8 * counts.trainable}
    fsdp = training_memory.state_bytes(counts, "fsdp2", 8)
    assert fsdp["adamw"] == ddp["adamw"] / 8
    assert 4 * counts.tokenizer < fsdp["parameters"] < ddp["parameters"]


def test_table_has_a_ddp_and_an_fsdp2_row_per_model():
    rows = training_memory.estimate_rows({"tiny": MageConfig(**tiny_config_kwargs())}, batch_size=4, num_gpus=2)
    assert [r["strategy"] for r in rows] == ["ddp", "fsdp2 x2"]
    assert rows[1]["total"] < rows[0]["total"]
    assert training_memory.format_table(rows, 4).count("| tiny |") == 2
