"""Pipelines under bad input and faulty folders: NaN/inf, guidance, mismatched or truncated weights, masks of
another size, and outpainting that extends the canvas (issue 12, items 1, 4, 7, 10, 11)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_pipeline_mage import generators, make_tiny_pipeline

import mage_hf
from mage_hf import MageInpaintPipeline, MagePipeline
from mage_hf.pipeline_mage_inpaint import outpaint_windows, preprocess_mask, token_mask_from_pixels


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(MageInpaintPipeline)


@pytest.fixture(scope="module")
def cond_pipe():
    return make_tiny_pipeline(MagePipeline, class_conditional=True)


@pytest.fixture
def image():
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def default_copy(tmp_path):
    """A writable copy of the shipped default pipeline folder."""
    folder = tmp_path / "default"
    shutil.copytree(mage_hf.DEFAULT_MODEL_PATH, folder)
    return folder


# ----------------------------------------------------------------------------- item 1: NaN / inf inputs
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_non_finite_image_or_mask_is_refused(pipe, image, bad, as_numpy):
    broken = image.clone()
    broken[0, 1, 3, 4] = bad
    mask = torch.zeros(1, 1, 16, 16)
    if as_numpy:
        broken, mask = broken[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy()
    with pytest.raises(ValueError, match="`image` contains NaN or inf"):
        pipe(broken, mask)
    bad_mask = torch.zeros(1, 1, 16, 16)
    bad_mask[..., 5, 5] = bad
    with pytest.raises(ValueError, match="`mask_image` contains NaN or inf"):
        pipe(image, bad_mask.numpy()[0, 0] if as_numpy else bad_mask)
    with pytest.raises(ValueError, match="`image` contains NaN or inf"):
        pipe.outpaint(broken, right=4)


@pytest.mark.parametrize("name", ["guidance_scale", "choice_temperature"])
@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_guidance_and_temperature_are_refused(cond_pipe, name, bad):
    with pytest.raises(ValueError, match=f"`{name}` must be a finite number"):
        cond_pipe(class_labels=[1], num_inference_steps=2, **{name: bad})


@pytest.mark.parametrize(
    "replacement, match",
    [
        (lambda ids: ids.float().masked_fill(ids == ids.max(), float("nan")), "integer token ids"),
        (lambda ids: torch.full_like(ids, 10_000), "outside the codebook"),
        (lambda ids: torch.full_like(ids, -1), "outside the codebook"),
    ],
)
def test_callback_latents_are_checked(cond_pipe, replacement, match):
    with pytest.raises(ValueError, match=match):
        cond_pipe(num_inference_steps=3, generator=torch.manual_seed(0),
                  callback_on_step_end=lambda p, i, t, kw: {"latents": replacement(kw["latents"])})


# ----------------------------------------------------------------------------- item 4: config does not fit the weights
@pytest.mark.parametrize("layers", [4, 8])
def test_config_that_does_not_match_the_weights_is_refused(default_copy, layers):
    config_path = default_copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["num_hidden_layers"] == 6  # the shipped checkpoint
    config["num_hidden_layers"] = layers
    config_path.write_text(json.dumps(config))
    kind = "unexpected" if layers < 6 else "missing"
    with pytest.raises(ValueError, match=rf"`transformer` weights .* 24 {kind}.*allow_mismatched_weights=True"):
        MagePipeline.from_pretrained(default_copy)
    loaded = MagePipeline.from_pretrained(default_copy, allow_mismatched_weights=True)
    assert loaded.transformer.config.num_hidden_layers == layers


def test_vqvae_config_that_does_not_match_is_refused(default_copy):
    config_path = default_copy / "vqvae" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_res_blocks"] += 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="`vqvae` weights .* missing"):
        MagePipeline.from_pretrained(default_copy)


def test_matching_folder_loads_without_the_option():
    MagePipeline.from_pretrained(mage_hf.DEFAULT_MODEL_PATH)  # the shipped folder passes the check


# ----------------------------------------------------------------------------- item 7: truncated weights
@pytest.mark.parametrize("component, filename", [("transformer", "model.safetensors"),
                                                 ("vqvae", "diffusion_pytorch_model.safetensors")])
@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_weights_name_the_file(default_copy, component, filename, keep):
    path = default_copy / component / filename
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=rf"{component}/{filename}.*(truncated|not a readable)"):
        MagePipeline.from_pretrained(default_copy)


# ----------------------------------------------------------------------------- item 10: masks of another size
def test_mask_of_another_size_is_resized_nearest(pipe, image):
    small = torch.zeros(1, 1, 4, 4)
    small[..., 1, 2] = 1.0
    large = small.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # nearest upsampling to 16x16
    from_small = pipe(image, small, num_inference_steps=3, generator=generators(0), output_type="latent").images
    from_large = pipe(image, large, num_inference_steps=3, generator=generators(0), output_type="latent").images
    assert torch.equal(from_small, from_large)
    kept = ~token_mask_from_pixels(large, pipe.vqvae.downsample_factor)
    assert torch.equal(from_small[kept], pipe.vqvae.tokenize(image)[kept])
    # a PIL mask of another size (grey values thresholded at 128)
    import PIL.Image

    pil = PIL.Image.fromarray((small[0, 0].numpy() * 200).astype(np.uint8))
    from_pil = pipe(image, pil, num_inference_steps=3, generator=generators(0), output_type="latent").images
    assert torch.equal(from_pil, from_large)


def test_mask_threshold_is_documented_and_applied():
    mask = preprocess_mask(np.array([[127, 128]], dtype=np.uint8))
    assert mask.tolist() == [[[[0.0, 1.0]]]]
    assert "128-255 regenerate" in MageInpaintPipeline.__call__.__doc__
    assert "128-255 regenerate" in preprocess_mask.__doc__


# ----------------------------------------------------------------------------- item 11: outpainting extends the canvas
def test_outpaint_extends_the_canvas_and_keeps_the_image_tokens(pipe, image):
    factor = pipe.vqvae.downsample_factor  # 2 px per token; the model's window is 8x8 tokens
    out = pipe.outpaint(image, left=4, right=3, top=0, bottom=8, num_inference_steps=3, generator=generators(0),
                        output_type="pt").images
    # margins rounded up to whole patches: 4 -> 4 px, 3 -> 4 px, 8 -> 8 px
    assert out.shape == (1, 3, 16 + 8, 16 + 8)
    ids = pipe.outpaint(image, left=4, right=3, bottom=8, num_inference_steps=3, generator=generators(0),
                        output_type="latent").images
    grid = ids.view(1, 24 // factor, 24 // factor)
    assert torch.equal(grid[:, 0:8, 2:10].reshape(1, -1), pipe.vqvae.tokenize(image))
    assert int((ids == pipe.transformer.config.mask_token_id).sum()) == 0
    assert torch.equal(pipe.vqvae.decode_tokens(ids, grid_size=(12, 12)).clamp(0, 1), out)
    # the whole call depends only on the generator
    again = pipe.outpaint(image, left=4, right=3, bottom=8, num_inference_steps=3, generator=generators(0),
                          output_type="latent").images
    other = pipe.outpaint(image, left=4, right=3, bottom=8, num_inference_steps=3, generator=generators(1),
                          output_type="latent").images
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_outpaint_per_image_generators_and_blend(pipe, image):
    batch = torch.cat([image, image.flip(-1)])
    both = pipe.outpaint(batch, right=8, num_inference_steps=3, generator=generators(3, 4), output_type="latent").images
    alone = pipe.outpaint(batch[1:], right=8, num_inference_steps=3, generator=generators(4),
                          output_type="latent").images
    assert torch.equal(both[1:], alone)
    blended = pipe.outpaint(image, top=4, num_inference_steps=2, generator=generators(0), blend_unmasked_pixels=True,
                            output_type="pt").images
    assert blended.shape == (1, 3, 20, 16) and torch.equal(blended[..., 4:, :], image)
    pil = pipe.outpaint(image, top=4, num_inference_steps=2, generator=generators(0)).images[0]
    assert pil.size == (16, 20)


def test_outpaint_bad_arguments(pipe, image):
    with pytest.raises(ValueError, match="at least one of `left`"):
        pipe.outpaint(image)
    with pytest.raises(ValueError, match="`left` must be an integer"):
        pipe.outpaint(image, left=-2)
    with pytest.raises(ValueError, match="either `box`"):
        pipe.outpaint(image, box=(4, 4, 12, 12), left=2)
    with pytest.raises(ValueError, match="multiples of the token patch"):
        pipe.outpaint(image[..., :15, :], right=4)
    with pytest.raises(ValueError, match="at least one window"):
        pipe.outpaint(image[..., :8, :8], right=4)
    for stride in (0, 8):
        with pytest.raises(ValueError, match="window_stride"):
            pipe.outpaint(image, right=4, window_stride=stride)


@pytest.mark.parametrize("rows, cols, image_rows, image_cols", [
    (8, 20, slice(0, 8), slice(6, 14)), (16, 16, slice(4, 12), slice(4, 12)), (9, 30, slice(1, 9), slice(0, 8)),
])
@pytest.mark.parametrize("stride", [1, 4, 7])
def test_outpaint_windows_cover_the_canvas_outwards(rows, cols, image_rows, image_cols, stride):
    windows = outpaint_windows(rows, cols, 8, stride, image_rows, image_cols)
    known = torch.zeros(rows, cols, dtype=torch.bool)
    known[image_rows, image_cols] = True
    for row, col in windows:
        assert 0 <= row <= rows - 8 and 0 <= col <= cols - 8
        assert known[row : row + 8, col : col + 8].any()  # every window overlaps something already known
        known[row : row + 8, col : col + 8] = True
    assert known.all() and len(set(windows)) == len(windows)


def test_zoom_out_box_keeps_the_model_size(pipe, image):
    ids = pipe.outpaint(image, box=(4, 4, 12, 12), generator=generators(0), output_type="latent").images
    assert ids.shape == (1, pipe.transformer.config.num_tokens)
