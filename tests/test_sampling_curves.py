"""`examples/sampling_curves.py`: the guidance rule, and a tiny end-to-end sweep that writes the chosen default
into the model folder, which the plain call then uses."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EXAMPLES_DIR, run_example
from test_pipeline_mage import generators, make_tiny_pipeline

from mage_hf import MagePipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def curves_module(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))  # the script imports its sibling evaluate_default.py
    import sampling_curves

    return sampling_curves


def point(scale, accuracy, fid, schedule="constant"):
    return {"guidance_scale": scale, "guidance_schedule": schedule, "class_accuracy": accuracy, "fid": fid}


def test_rule_takes_the_best_agreement_within_the_fid_slack(curves_module):
    choose = curves_module.choose_guidance
    points = [point(1, 0.60, 70.0), point(3, 0.75, 63.0), point(5, 0.80, 64.5), point(8, 0.85, 70.0)]
    assert choose(points, 0.05)["guidance_scale"] == 5  # 64.5 <= 1.05 x 63; 70 is not
    assert choose(points, 0.0)["guidance_scale"] == 3  # no slack: the lowest FID
    assert choose(points, 1.0)["guidance_scale"] == 8
    tie = [point(2, 0.8, 50.0), point(4, 0.8, 50.0, "linear")]
    assert choose(tie, 0.05)["guidance_scale"] == 2  # equal agreement: the smaller scale
    with pytest.raises(ValueError, match="no sweep points"):
        choose([], 0.05)


def test_sweep_writes_the_chosen_default_that_the_plain_call_uses(curves_module, monkeypatch, tmp_path, data_dir):
    model = tmp_path / "model"
    make_tiny_pipeline(class_conditional=True).save_pretrained(model)
    before = json.loads((model / "model_index.json").read_text())
    results = run_example(
        monkeypatch, "sampling_curves", "--model", model, "--data", data_dir / "fashion_mnist_5k.npz",
        "--samples-per-class", 3, "--guidance-scales", 1, 4, "--schedules", "constant", "linear", "--steps", 2,
        "--steps-sweep", 2, 3, "--judge-epochs", 1, "--max-train-samples", 300, "--max-test-samples", 60,
        "--out", tmp_path / "curves.json", "--write-default",
    )
    assert [(p["guidance_scale"], p["guidance_schedule"]) for p in results["guidance_sweep"]] == [
        (1.0, "constant"), (4.0, "constant"), (1.0, "linear"), (4.0, "linear")]
    assert [p["num_inference_steps"] for p in results["steps_sweep"]] == [2, 3]
    chosen = results["chosen"]
    assert chosen == curves_module.choose_guidance(results["guidance_sweep"], 0.05)
    assert json.loads((tmp_path / "curves.json").read_text())["chosen"]["guidance_scale"] == chosen["guidance_scale"]
    after = json.loads((model / "model_index.json").read_text())
    assert after["default_guidance_scale"] == chosen["guidance_scale"]
    assert after["default_guidance_schedule"] == chosen["guidance_schedule"]
    assert {k: v for k, v in after.items() if not k.startswith("default_")} == {
        k: v for k, v in before.items() if not k.startswith("default_")}
    assert not list(model.glob("*.tmp"))

    pipe = MagePipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    call = dict(class_labels=[1, 2], num_inference_steps=2, output_type="latent")
    explicit = pipe(generator=generators(0, 1), guidance_scale=chosen["guidance_scale"],
                    guidance_schedule=chosen["guidance_schedule"], **call).images
    assert torch.equal(pipe(generator=generators(0, 1), **call).images, explicit)


def test_unconditional_model_is_refused(curves_module, monkeypatch, tmp_path, data_dir):
    model = tmp_path / "uncond"
    make_tiny_pipeline().save_pretrained(model)
    with pytest.raises(SystemExit, match="unconditional"):
        run_example(monkeypatch, "sampling_curves", "--model", model, "--data", data_dir / "fashion_mnist_5k.npz")
