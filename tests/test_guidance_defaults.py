"""The guidance a class-conditional call uses when the caller passes none: carried with the model in
`model_index.json` (`default_guidance_scale` / `default_guidance_schedule`), used by `MagePipeline`,
`MageInpaintPipeline` and the CLI; unconditional models and folders without the keys behave as before."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline
from test_pipeline_mage import generators, make_tiny_pipeline

from mage_hf import MageInpaintPipeline, MagePipeline, cli

pytestmark = pytest.mark.usefixtures("single_thread")


def tokens(pipe, **kwargs) -> torch.Tensor:
    return pipe(num_inference_steps=4, generator=generators(0, 1), output_type="latent", **kwargs).images


@pytest.fixture(scope="module")
def cond_pipe():
    return make_tiny_pipeline(class_conditional=True)


def test_call_without_guidance_uses_the_saved_default(cond_pipe):
    plain = tokens(cond_pipe, class_labels=[1, 2])
    guided = tokens(cond_pipe, class_labels=[1, 2], guidance_scale=4.0)
    assert not torch.equal(plain, guided)  # guidance 4 changes this model's samples
    cond_pipe.set_default_guidance(4.0)
    try:
        assert torch.equal(tokens(cond_pipe, class_labels=[1, 2]), guided)
        assert cond_pipe.guidance_scale == 4.0
        # an explicit argument still wins, and 1.0 is plain conditional sampling
        assert torch.equal(tokens(cond_pipe, class_labels=[1, 2], guidance_scale=1.0), plain)
        # the schedule default applies the same way
        linear = tokens(cond_pipe, class_labels=[1, 2], guidance_scale=4.0, guidance_schedule="linear")
        cond_pipe.set_default_guidance(4.0, "linear")
        assert torch.equal(tokens(cond_pipe, class_labels=[1, 2]), linear)
    finally:
        cond_pipe.set_default_guidance(None)
    assert torch.equal(tokens(cond_pipe, class_labels=[1, 2]), plain)


def test_default_guidance_round_trips_through_save_and_both_loaders(cond_pipe, tmp_path):
    guided = tokens(cond_pipe, class_labels=[3, 4], guidance_scale=2.5, guidance_schedule="linear")
    cond_pipe.set_default_guidance(2.5, "linear")
    try:
        cond_pipe.save_pretrained(tmp_path)
    finally:
        cond_pipe.set_default_guidance(None)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["default_guidance_scale"] == 2.5 and index["default_guidance_schedule"] == "linear"
    for loader in (MagePipeline, DiffusionPipeline, MageInpaintPipeline):
        loaded = loader.from_pretrained(tmp_path)
        loaded.set_progress_bar_config(disable=True)
        assert loaded.config.default_guidance_scale == 2.5, loader
        if loader is not MageInpaintPipeline:
            assert torch.equal(tokens(loaded, class_labels=[3, 4]), guided), loader
    # the loading call can override what the folder says, as for any diffusers pipeline setting
    assert MagePipeline.from_pretrained(tmp_path, default_guidance_scale=6.0).config.default_guidance_scale == 6.0


def test_folders_without_the_keys_and_unconditional_models_are_unchanged(tmp_path):
    pipe = make_tiny_pipeline()
    before = tokens(pipe)
    pipe.save_pretrained(tmp_path)
    index_file = tmp_path / "model_index.json"
    index = json.loads(index_file.read_text())
    for key in ("default_guidance_scale", "default_guidance_schedule"):
        index.pop(key)  # a folder saved before these settings existed
    index_file.write_text(json.dumps(index))
    loaded = MagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.resolve_guidance(None, None) == (1.0, "constant")
    assert torch.equal(tokens(loaded), before)
    # a default set on an unconditional model changes nothing and warns about nothing
    loaded.set_default_guidance(5.0)
    assert torch.equal(tokens(loaded), before)


def test_inpainting_uses_the_default_too():
    pipe = make_tiny_pipeline(MageInpaintPipeline, class_conditional=True)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    call = dict(image=PIL.Image.fromarray(image), mask_image=PIL.Image.fromarray(mask), class_labels=[5],
                num_inference_steps=4, output_type="latent")
    guided = pipe(generator=torch.Generator().manual_seed(0), guidance_scale=5.0, **call).images
    plain = pipe(generator=torch.Generator().manual_seed(0), **call).images
    assert not torch.equal(plain, guided)
    pipe.set_default_guidance(5.0)
    assert torch.equal(pipe(generator=torch.Generator().manual_seed(0), **call).images, guided)


@pytest.mark.parametrize(
    "scale, schedule, message",
    [(-1.0, None, "`default_guidance_scale` must be a finite number >= 0, got -1.0"),
     (float("inf"), None, "`default_guidance_scale`"),
     ("3", None, "`default_guidance_scale`"),
     (2.0, "cosine", "`default_guidance_schedule` must be one of")],
)
def test_bad_defaults_are_refused(cond_pipe, scale, schedule, message):
    with pytest.raises(ValueError, match=message):
        MagePipeline(cond_pipe.vqvae, cond_pipe.transformer, cond_pipe.scheduler,
                     default_guidance_scale=scale, default_guidance_schedule=schedule)
    with pytest.raises(ValueError, match=message):
        cond_pipe.set_default_guidance(scale, schedule)


def test_cli_generate_uses_the_saved_default(cond_pipe, tmp_path):
    cond_pipe.set_default_guidance(4.0)
    try:
        cond_pipe.save_pretrained(tmp_path / "model")
    finally:
        cond_pipe.set_default_guidance(None)
    outputs = {}
    for name, extra in {"default": [], "explicit": ["--guidance-scale", "4"], "plain": ["--guidance-scale", "1"]}.items():
        out = tmp_path / f"{name}.png"
        assert cli.main(["generate", "--model", str(tmp_path / "model"), "--class-label", "1", "2", "--num-images",
                         "2", "--steps", "4", "--out", str(out), *extra]) == 0
        outputs[name] = np.asarray(PIL.Image.open(out))
    assert np.array_equal(outputs["default"], outputs["explicit"])
    assert not np.array_equal(outputs["default"], outputs["plain"])
