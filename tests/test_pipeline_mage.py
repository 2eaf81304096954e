"""MagePipeline: reproducibility, class conditioning and guidance, callbacks, outputs, dtypes, errors."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config_kwargs
from diffusers.callbacks import PipelineCallback

from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline, MageScheduler, MageVQModel

CLASS_NAMES = {i: f"class{i}" for i in range(10)}
CLASS_NAMES[3] = "sneaker, trainer"


def make_tiny_pipeline(cls=MagePipeline, class_conditional: bool = False, seed: int = 0):
    """A random tiny pipeline in eval mode, the transformer's tokenizer sharing the vqvae's encoder weights."""
    overrides = dict(class_conditional=True, id2label=CLASS_NAMES) if class_conditional else {}
    config = MageConfig(**tiny_config_kwargs(**overrides))
    torch.manual_seed(seed)
    vqvae = MageVQModel(**config.vqvae_config).eval()
    transformer = MageForMaskedImageModeling(config).eval()
    encoder_state = {k: v for k, v in vqvae.state_dict().items() if not k.startswith("decoder.")}
    transformer.mage.vqvae.load_state_dict(encoder_state)
    pipe = cls(vqvae=vqvae, transformer=transformer, scheduler=MageScheduler(mask_token_id=config.mask_token_id))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


@pytest.fixture(scope="module")
def cond_pipe():
    return make_tiny_pipeline(class_conditional=True)


def reference_decode(pipe, batch, steps, generator, class_ids=None, guidance_scale=1.0):
    """The decoding loop written out, one model call per branch (no batching of the two guidance branches)."""
    model, config = pipe.transformer, pipe.transformer.config
    scheduler = MageScheduler(**pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    latents = torch.full((batch, config.num_tokens), config.mask_token_id)

    def logits(input_ids):
        return model(input_ids=input_ids).logits[:, 1:, : config.codebook_size].float()

    for i in range(steps):
        uncond = logits(model.mage.build_input_ids(latents))
        if class_ids is None:
            guided = uncond
        else:
            cond = logits(model.mage.build_input_ids(latents, class_ids))
            guided = cond if guidance_scale == 1.0 else uncond + guidance_scale * (cond - uncond)
        out = scheduler.step(guided, i, latents, generator=generator)
        latents = out.pred_original_sample if i == steps - 1 else out.prev_sample
    return latents


def test_same_generator_same_images(pipe):
    first = pipe(batch_size=2, generator=torch.manual_seed(3), output_type="np").images
    second = pipe(batch_size=2, generator=torch.manual_seed(3), output_type="np").images
    other = pipe(batch_size=2, generator=torch.manual_seed(4), output_type="np").images
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_matches_written_out_loop(pipe):
    ids = pipe(batch_size=2, num_inference_steps=6, generator=generators(0, 1), output_type="latent").images
    assert torch.equal(ids, reference_decode(pipe, 2, 6, generators(0, 1)))


@pytest.mark.parametrize("conditional", [False, True])
def test_list_of_generators_is_per_image(pipe, cond_pipe, conditional):
    kwargs = dict(class_labels=[1, 2, 5], guidance_scale=2.5) if conditional else dict(batch_size=3)
    target = cond_pipe if conditional else pipe
    batched = target(generator=generators(10, 11, 12), output_type="latent", **kwargs).images
    for i, seed in enumerate((10, 11, 12)):
        alone_kwargs = dict(class_labels=[kwargs["class_labels"][i]], guidance_scale=2.5) if conditional else {}
        alone = target(generator=generators(seed), output_type="latent", **alone_kwargs).images
        assert torch.equal(batched[i : i + 1], alone)  # the same tokens, exactly
    # Pixels agree up to the VQ decoder's float rounding (convolution kernels may depend on the batch size).
    images = target.decode_latents(batched, "pt")
    torch.testing.assert_close(images[1:2], target.decode_latents(batched[1:2], "pt"), rtol=0, atol=1e-5)


def test_class_conditional_guidance(cond_pipe):
    run = lambda **kw: cond_pipe(generator=generators(0, 1), num_inference_steps=8, output_type="latent", **kw).images
    labels = torch.tensor([2, 7])
    plain = run(class_labels=[2, 7])
    assert torch.equal(plain, reference_decode(cond_pipe, 2, 8, generators(0, 1), labels))
    assert torch.equal(run(class_labels=[2, 7], guidance_scale=1.0, guidance_schedule="linear"), plain)
    guided = run(class_labels=[2, 7], guidance_scale=4.0)
    assert not torch.equal(guided, plain)
    assert torch.equal(guided, reference_decode(cond_pipe, 2, 8, generators(0, 1), labels, guidance_scale=4.0))
    assert not torch.equal(run(class_labels=[2, 7], guidance_scale=4.0, guidance_schedule="linear"), guided)
    # guidance 0 is the unconditional model
    assert torch.equal(run(class_labels=[2, 7], guidance_scale=0.0), run(batch_size=2))
    assert not torch.equal(run(class_labels=[2, 2]), plain)


def test_class_names_and_broadcast(cond_pipe):
    assert cond_pipe.labels["sneaker"] == 3 and cond_pipe.labels["trainer"] == 3
    assert cond_pipe.get_label_ids(["class1", "trainer"]) == [1, 3]
    run = lambda **kw: cond_pipe(generator=generators(0, 1), num_inference_steps=4, output_type="latent", **kw).images
    by_name = run(class_labels=["class1", "sneaker"])
    assert torch.equal(by_name, run(class_labels=torch.tensor([1, 3])))
    assert torch.equal(by_name, run(class_labels=np.array([1, 3])))
    assert torch.equal(run(class_labels=5, batch_size=2), run(class_labels=[5, 5]))


def test_save_load_round_trip(tmp_path, cond_pipe):
    cond_pipe.save_pretrained(tmp_path)
    loaded = MagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.labels == cond_pipe.labels
    kwargs = dict(class_labels=[1, 4], guidance_scale=2.0, num_inference_steps=5, output_type="np")
    np.testing.assert_array_equal(
        loaded(generator=generators(0, 1), **kwargs).images, cond_pipe(generator=generators(0, 1), **kwargs).images
    )


def test_torch_dtype_keeps_vqvae_float32(tmp_path, pipe):
    pipe.save_pretrained(tmp_path)
    low = MagePipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert low.transformer.dtype == torch.bfloat16 and low.vqvae.dtype == torch.float32
    torch.testing.assert_close(low.vqvae.state_dict(), pipe.vqvae.state_dict(), rtol=0, atol=0)
    low.set_progress_bar_config(disable=True)
    ids = low(batch_size=2, generator=generators(0, 1), output_type="latent").images
    assert ids.dtype == torch.long and ids.max() < pipe.transformer.config.codebook_size
    images = low(batch_size=1, generator=generators(0), output_type="pt").images
    assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
    both = MagePipeline.from_pretrained(tmp_path, torch_dtype=torch.bfloat16, vqvae_dtype=None)
    assert both.vqvae.dtype == torch.bfloat16


def test_callback_sees_token_ids(pipe):
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append(kwargs["latents"].clone())
        return {}

    final = pipe(batch_size=2, num_inference_steps=12, generator=generators(0, 1), output_type="latent",
                 callback_on_step_end=callback).images
    mask_id = pipe.transformer.config.mask_token_id
    counts = [int((ids[0] == mask_id).sum()) for ids in seen]
    assert counts == pipe.scheduler.masked_count_schedule(64, 12)[:-1] + [0]
    assert all(ids.shape == (2, 64) and ids.dtype == torch.long for ids in seen)
    assert torch.equal(seen[-1], final)


def test_callback_can_replace_latents(pipe):
    class ForceToken(PipelineCallback):
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            latents = callback_kwargs["latents"].clone()
            latents[:, 0] = 7
            return {"latents": latents}

    ids = pipe(batch_size=2, generator=generators(0, 1), output_type="latent", callback_on_step_end=ForceToken()).images
    assert (ids[:, 0] == 7).all()

    def remask(p, step, timestep, kwargs):
        return {"latents": torch.full_like(kwargs["latents"], p.transformer.config.mask_token_id)}

    with pytest.raises(ValueError, match="still masked"):
        pipe(num_inference_steps=2, output_type="latent", callback_on_step_end=remask)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["logits"])


def test_output_types(pipe):
    run = lambda output_type, **kw: pipe(batch_size=2, generator=generators(0, 1), output_type=output_type, **kw)
    pil, np_images = run("pil").images, run("np").images
    pt, latent = run("pt").images, run("latent").images
    assert len(pil) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (16, 16) for im in pil)
    assert np_images.shape == (2, 16, 16, 3) and np_images.min() >= 0 and np_images.max() <= 1
    assert pt.shape == (2, 3, 16, 16) and pt.dtype == torch.float32
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images)
    np.testing.assert_array_equal(np.asarray(pil[0]), (np_images[0] * 255).round().astype(np.uint8))
    assert latent.shape == (2, 64) and latent.dtype == torch.long
    torch.testing.assert_close(pipe.decode_latents(latent, "pt"), pt)
    as_tuple = run("latent", return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], latent)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(num_inference_steps=2.5), "num_inference_steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_schedule="cosine"), "guidance_schedule"),
        (dict(choice_temperature=-2.0), "choice_temperature"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(batch_size=2, generator=generators(0, 1, 2)), "batch"),
        (dict(class_labels=1), "unconditional"),
    ],
)
def test_bad_inputs(pipe, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**kwargs)


@pytest.mark.parametrize(
    "class_labels, match",
    [
        (10, "out of range"), (11, "out of range"), (-1, "out of range"), ("cat", "unknown class"),
        (1.5, "class_labels"), ([1.5], "ints or class names"),
    ],
)
def test_bad_class_labels(cond_pipe, class_labels, match):
    with pytest.raises((ValueError, TypeError), match=match):
        cond_pipe(class_labels=class_labels)


def test_fake_class_rejected_without_class_names(cond_pipe):
    """Without real class names every class token is a valid id, except the fake (unconditional) one."""
    config = cond_pipe.transformer.config
    unnamed = MagePipeline(
        vqvae=cond_pipe.vqvae,
        transformer=MageForMaskedImageModeling(MageConfig(**tiny_config_kwargs(class_conditional=True))).eval(),
        scheduler=cond_pipe.scheduler,
    )
    assert unnamed.num_classes == config.num_class_tokens
    with pytest.raises(ValueError, match="fake"):
        unnamed(class_labels=config.fake_class_label - config.codebook_size)


def test_mismatched_components(pipe):
    broken = MagePipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, scheduler=MageScheduler(mask_token_id=5))
    with pytest.raises(ValueError, match="mask_token_id"):
        broken()
