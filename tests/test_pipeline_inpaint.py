"""MageInpaintPipeline: kept tokens, masks, outpainting and variations."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from test_pipeline_mage import generators, make_tiny_pipeline

from mage_hf import MageInpaintPipeline, make_outpaint_inputs
from mage_hf.pipeline_mage_inpaint import preprocess_mask, random_token_subset, token_mask_from_pixels


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline(MageInpaintPipeline)


@pytest.fixture
def image():
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def box_mask(top, left, bottom, right, size=16):
    mask = torch.zeros(1, 1, size, size)
    mask[..., top:bottom, left:right] = 1.0
    return mask


def test_unmasked_tokens_kept_exactly(pipe, image):
    mask = box_mask(3, 3, 9, 7)  # pixels rows 3..8, cols 3..6 -> token rows 1..4, cols 1..3 (2x2 patches)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:5, 1:4] = True
    token_mask = token_mask_from_pixels(mask, pipe.vqvae.downsample_factor)[0]
    assert torch.equal(token_mask, expected.flatten())

    known = pipe.vqvae.tokenize(image)[0]
    ids = pipe(image, mask, generator=generators(0), output_type="latent").images[0]
    assert torch.equal(ids[~token_mask], known[~token_mask])
    assert not torch.equal(ids[token_mask], known[token_mask])  # random model: regenerated tokens differ

    seen = []
    pipe(image, mask, generator=generators(0), output_type="latent",
         callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"].clone()) or {})
    n0 = int(token_mask.sum())
    mask_id = pipe.transformer.config.mask_token_id
    schedule = pipe.scheduler.masked_count_schedule(n0, 12)
    assert [int((s == mask_id).sum()) for s in seen] == schedule[:-1] + [0]


def test_input_formats_agree(pipe, image):
    mask = box_mask(0, 8, 16, 16)
    pil_image = PIL.Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    pil_mask = PIL.Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8))
    quantized = torch.from_numpy(np.array(pil_image)).permute(2, 0, 1)[None].float() / 255
    run = lambda im, m: pipe(im, m, generator=generators(3), num_inference_steps=4, output_type="latent").images
    reference = run(quantized, mask)
    assert torch.equal(run(pil_image, pil_mask), reference)
    assert torch.equal(run(np.asarray(pil_image), mask[0, 0].numpy()), reference)
    assert torch.equal(run([pil_image], [pil_mask]), reference)
    assert torch.equal(run(quantized[0], mask[0]), reference)


def test_per_image_generators_and_blend(pipe, image):
    mask = box_mask(4, 4, 12, 12)
    batched = pipe(image, mask, generator=generators(1, 2), output_type="latent").images
    assert batched.shape == (2, 64)
    assert torch.equal(batched[1:], pipe(image, mask, generator=generators(2), output_type="latent").images)
    blended = pipe(image, mask, generator=generators(1), output_type="pt", blend_unmasked_pixels=True).images
    keep = mask == 0
    torch.testing.assert_close(blended[keep.expand_as(blended)], image[keep.expand_as(image)])
    raw = pipe(image, mask, generator=generators(1), output_type="pt").images
    torch.testing.assert_close(blended[~keep.expand_as(blended)], raw[~keep.expand_as(raw)])


def test_mask_size_and_image_size_errors(pipe, image):
    with pytest.raises(ValueError, match="expects 16x16"):
        pipe(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"`image` values must be in \[0, 1\]"):
        pipe(image * 2, torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="mask_image"):
        pipe(image, torch.ones(1, 3, 16, 16))
    with pytest.raises(ValueError, match="strength"):
        pipe(image, strength=1.5)
    with pytest.raises(ValueError, match="batch"):
        pipe(torch.rand(2, 3, 16, 16), torch.ones(3, 1, 16, 16))
    with pytest.raises(TypeError, match="image"):
        pipe("photo.png", torch.ones(1, 1, 16, 16))


def test_mask_binarised_at_half():
    mask = preprocess_mask(np.array([[0, 127], [128, 255]], dtype=np.uint8))
    assert mask.tolist() == [[[[0.0, 0.0], [1.0, 1.0]]]]


def test_mask_modes_threshold_like_their_grey_values():
    # A 16-bit mask at 25% grey keeps its pixels (`convert("L")` made every non-zero 16-bit value 255).
    quarter16 = PIL.Image.fromarray(np.array([[0, 16384], [49152, 65535]], dtype=np.uint16))
    assert quarter16.mode == "I;16"
    assert preprocess_mask(quarter16).tolist() == [[[[0.0, 0.0], [1.0, 1.0]]]]
    # RGB masks threshold on their luma, as before; transparent parts of an RGBA mask keep their pixels.
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[1] = 255
    assert preprocess_mask(PIL.Image.fromarray(rgb)).tolist() == [[[[0.0, 0.0], [1.0, 1.0]]]]
    rgba = np.full((2, 2, 4), 255, np.uint8)
    rgba[0, :, 3] = 0
    assert preprocess_mask(PIL.Image.fromarray(rgba)).tolist() == [[[[0.0, 0.0], [1.0, 1.0]]]]


def test_outpainting(pipe, image):
    canvas, mask = make_outpaint_inputs(image, box=(4, 4, 12, 12), image_size=16)
    assert canvas.shape == (1, 3, 16, 16) and mask.shape == (1, 1, 16, 16)
    assert mask[..., 4:12, 4:12].sum() == 0 and mask.sum() == 16 * 16 - 64
    shrunk = torch.nn.functional.interpolate(image, size=(8, 8), mode="bicubic", antialias=True).clamp(0, 1)
    torch.testing.assert_close(canvas[..., 4:12, 4:12], shrunk)
    # an image of the box's size is placed as it is
    same, _ = make_outpaint_inputs(image[..., :8, :6], box=(10, 8, 16, 16), image_size=16)
    assert torch.equal(same[..., 8:16, 10:16], image[..., :8, :6])

    ids = pipe.outpaint(image, box=(4, 4, 12, 12), generator=generators(0), output_type="latent").images
    kept = ~token_mask_from_pixels(mask, pipe.vqvae.downsample_factor)
    assert int(kept.sum()) == 16  # the 4x4 tokens inside the box
    assert torch.equal(ids[kept], pipe.vqvae.tokenize(canvas)[kept])
    with pytest.raises(ValueError, match="box"):
        make_outpaint_inputs(image, box=(4, 4, 20, 12), image_size=16)
    with pytest.raises(ValueError, match="box"):
        make_outpaint_inputs(image, box=(4, 4, 12), image_size=16)


def test_variations(pipe, image):
    known = pipe.vqvae.tokenize(image)
    seen = []
    ids = pipe(image, strength=0.25, generator=generators(5), output_type="latent",
               callback_on_step_end=lambda p, i, t, kw: seen.append(kw["latents"].clone()) or {}).images
    assert seen  # decoding ran
    mask_id = pipe.transformer.config.mask_token_id
    assert pipe.scheduler.masked_count_schedule(16, 12)[0] == int((seen[0] == mask_id).sum())
    assert int((ids != known).sum()) <= 16  # at most round(0.25 * 64) tokens changed
    other = pipe(image, strength=0.25, generator=generators(6), output_type="latent").images
    assert not torch.equal(ids, other)
    # strength 0 returns the VQ reconstruction
    assert torch.equal(pipe(image, strength=0.0, output_type="latent").images, known)
    # strength inside a mask: only masked tokens may change
    mask = box_mask(0, 0, 8, 16)
    region = token_mask_from_pixels(mask, pipe.vqvae.downsample_factor)
    partial = pipe(image, mask, strength=0.5, generator=generators(5), output_type="latent").images
    assert torch.equal(partial[~region], known[~region])


def test_random_token_subset_counts_and_rows():
    region = torch.zeros(3, 10, dtype=torch.bool)
    region[:, :6] = True
    region[2] = False
    chosen = random_token_subset(region, 0.5, generators(0, 1, 2))
    assert chosen.sum(dim=1).tolist() == [3, 3, 0] and not (chosen & ~region).any()
    assert torch.equal(chosen[1], random_token_subset(region[1:2], 0.5, generators(1))[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_known_tokens_kept_in_low_precision(image, dtype):
    pipe = make_tiny_pipeline(MageInpaintPipeline)
    pipe.transformer.to(dtype)
    mask = box_mask(2, 2, 14, 10)
    region = token_mask_from_pixels(mask, pipe.vqvae.downsample_factor)
    known = pipe.vqvae.tokenize(image)
    ids = pipe(image, mask, generator=generators(0), choice_temperature=30.0, output_type="latent").images
    assert torch.equal(ids[~region], known[~region])
    assert ids.max() < pipe.transformer.config.codebook_size
