"""MageScheduler: the original decoding schedule and the guarantees of one step."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from mage_hf import MageScheduler
from mage_hf.scheduling_mage import MASK_SCHEDULES, mask_schedule

MASK_ID = 99
CODEBOOK = 16


@pytest.fixture(scope="module")
def reference(fixture_dir):
    return load_file(str(fixture_dir / "reference.safetensors"))


def decode(scheduler, token_ids, steps, seed=0, dtype=torch.float32, choice_temperature=None):
    """Run the decoding loop with random logits; returns the masked counts after each step and the final grid."""
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    counts, before = [], token_ids
    for i, t in enumerate(scheduler.timesteps):
        logits = torch.randn(*token_ids.shape, CODEBOOK, generator=generator).to(dtype)
        out = scheduler.step(logits, t, token_ids, generator=generator, choice_temperature=choice_temperature)
        known = before != MASK_ID
        assert torch.equal(out.prev_sample[known], before[known]), f"step {i} changed a known token"
        assert torch.equal(out.pred_original_sample[known], before[known])
        assert (out.pred_original_sample != MASK_ID).all()
        counts.append((out.prev_sample == MASK_ID).sum(dim=1))
        token_ids = before = out.prev_sample
    return torch.stack(counts, dim=1), out.pred_original_sample


@pytest.mark.parametrize("steps, key", [(12, "gen_unknown_per_step"), (20, "gen_unknown_per_step_20")])
def test_schedule_matches_original(reference, steps, key):
    expected = reference[key].tolist()
    scheduler = MageScheduler(mask_token_id=MASK_ID)
    assert scheduler.masked_count_schedule(64, steps) == expected
    # A real step leaves exactly that many tokens masked (random logits: no ties).
    counts, final = decode(scheduler, torch.full((3, 64), MASK_ID), steps)
    assert counts.tolist() == [expected] * 3
    assert final.min() >= 0 and final.max() < CODEBOOK


def test_count_formula_is_float64_floor_clamped():
    scheduler = MageScheduler(mask_token_id=MASK_ID)
    scheduler.set_timesteps(12)
    unknown = 256
    for step in range(12):
        expected = max(1, min(unknown - 1, math.floor(256 * math.cos(math.pi / 2 * (step + 1) / 12))))
        unknown = scheduler.num_masked_after_step(step, 256, unknown)
        assert unknown == expected


def test_cut_off_is_inclusive():
    """Tokens whose confidence equals the cut-off are masked too (`<=`), as in the original."""
    scheduler = MageScheduler(mask_token_id=MASK_ID, choice_temperature=0.0)
    scheduler.set_timesteps(2)
    logits = torch.zeros(1, 8, CODEBOOK)  # every sampled token has the same probability: all tie
    out = scheduler.step(logits, 0, torch.full((1, 8), MASK_ID))
    assert int(out.num_masked) == 8 and (out.prev_sample == MASK_ID).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_known_tokens_never_remasked(dtype):
    """Partly known grids (inpainting): known tokens stay, even with low-precision logits that favour others."""
    generator = torch.Generator().manual_seed(1)
    token_ids = torch.randint(0, CODEBOOK, (4, 64), generator=generator)
    unknown = torch.rand(4, 64, generator=generator) < 0.5
    unknown[0] = True  # a fully masked row
    unknown[1] = False  # a fully known row
    unknown[2, 1:] = False  # a single unknown token
    token_ids = torch.where(unknown, MASK_ID, token_ids)
    scheduler = MageScheduler(mask_token_id=MASK_ID)
    counts, final = decode(scheduler, token_ids.clone(), 12, dtype=dtype, choice_temperature=50.0)
    assert torch.equal(final[~unknown], token_ids[~unknown])
    assert counts[1].sum() == 0
    # Counts are relative to what each row had masked at the start.
    n0 = unknown.sum(dim=1)
    assert counts[3, 0] == max(1, min(n0[3] - 1, math.floor(n0[3] * math.cos(math.pi / 24))))


def test_list_of_generators_is_per_row():
    scheduler = MageScheduler(mask_token_id=MASK_ID)
    scheduler.set_timesteps(4)
    logits = torch.randn(3, 16, CODEBOOK, generator=torch.Generator().manual_seed(0))
    sample = torch.full((3, 16), MASK_ID)
    batched = scheduler.step(logits, 0, sample, generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    alone = scheduler.step(logits[1:2], 0, sample[1:2], generator=[torch.Generator().manual_seed(6)])
    assert torch.equal(batched.prev_sample[1], alone.prev_sample[0])
    assert torch.equal(batched.pred_original_sample[1], alone.pred_original_sample[0])


@pytest.mark.parametrize("schedule", MASK_SCHEDULES)
def test_other_schedules(schedule):
    assert mask_schedule(0.0, schedule) == 1.0 and mask_schedule(1.0, schedule) == pytest.approx(0.0, abs=1e-12)
    scheduler = MageScheduler(mask_token_id=MASK_ID, mask_schedule=schedule)
    counts = scheduler.masked_count_schedule(64, 8)
    assert counts[-1] == 1 and all(a > b for a, b in zip(counts, counts[1:]))
    assert decode(scheduler, torch.full((2, 64), MASK_ID), 8)[0].tolist() == [counts] * 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask_schedule"):
        MageScheduler(mask_schedule="exponential")
    with pytest.raises(ValueError, match="choice_temperature"):
        MageScheduler(choice_temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        MageScheduler(temperature=0.0)
    scheduler = MageScheduler(mask_token_id=MASK_ID)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="set_timesteps"):
        MageScheduler(mask_token_id=MASK_ID).step(torch.zeros(1, 4, CODEBOOK), 0, torch.full((1, 4), MASK_ID))
    scheduler.set_timesteps(3)
    with pytest.raises(ValueError, match="timestep"):
        scheduler.step(torch.zeros(1, 4, CODEBOOK), 3, torch.full((1, 4), MASK_ID))
    with pytest.raises(ValueError, match="model_output"):
        scheduler.step(torch.zeros(1, 5, CODEBOOK), 0, torch.full((1, 4), MASK_ID))
    with pytest.raises(ValueError, match="generator"):
        scheduler.step(torch.zeros(2, 4, CODEBOOK), 0, torch.full((2, 4), MASK_ID), generator=[torch.Generator()])


def test_save_load_round_trip(tmp_path):
    scheduler = MageScheduler(mask_token_id=MASK_ID, mask_schedule="linear", choice_temperature=6.0)
    scheduler.save_pretrained(tmp_path)
    loaded = MageScheduler.from_pretrained(tmp_path)
    for key in ("mask_token_id", "mask_schedule", "choice_temperature", "temperature"):
        assert loaded.config[key] == scheduler.config[key]
