"""`MageInpaintPipeline`: inpainting, outpainting and image variations with MAGE.

All three are the same operation, as the MAGE authors describe editing: tokenize the image, mask some tokens,
run the iterative decoding over the masked tokens only (`MageScheduler` counts from the number masked in each
row), decode.

- inpainting: the tokens whose patch (`downsample_factor` x `downsample_factor` pixels) touches the pixel mask;
- outpainting / uncropping: the tokens outside a box that holds the image (`make_outpaint_inputs`, `outpaint`);
- variations: a random `strength` fraction of the tokens (of the whole image, or of the masked region).

Tokens that are not masked are kept exactly; `blend_unmasked_pixels=True` also pastes the original pixels back
outside the mask (the VQGAN decoder alone does not reproduce them exactly).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils import logging, replace_example_docstring
from torch.nn import functional as F

from .pipeline_mage import MagePipeline, _is_int
from .scheduling_mage import _uniform

logger = logging.get_logger(__name__)

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from mage_hf import DEFAULT_MODEL_PATH, MageInpaintPipeline

        >>> pipe = MageInpaintPipeline.from_pretrained(DEFAULT_MODEL_PATH)
        >>> image = Image.open("photo.png").convert("RGB").resize((256, 256))
        >>> mask = Image.new("L", (256, 256), 0)
        >>> mask.paste(255, (64, 64, 192, 192))  # white = regenerate
        >>> inpainted = pipe(image, mask, generator=torch.manual_seed(0), blend_unmasked_pixels=True).images[0]
        >>> # uncropping: the image shrunk into the centre, the border generated
        >>> zoomed_out = pipe.outpaint(image, box=(64, 64, 192, 192)).images[0]
        >>> # variations: re-sample 40% of the tokens
        >>> variations = pipe(image, strength=0.4, generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
        ```
"""


def _batched(value: ImageInput, name: str) -> tuple[torch.Tensor, bool]:
    """PIL image(s) / numpy / tensor -> (float tensor, channels_last?) with a leading batch dimension."""
    if isinstance(value, PIL.Image.Image):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, PIL.Image.Image) for v in value):
            raise TypeError(f"`{name}` as a list must hold PIL images only")
        sizes = {v.size for v in value}
        if len(sizes) > 1:
            raise ValueError(f"`{name}`: all images must have the same size, got {sorted(sizes)}")
        mode = "L" if name == "mask_image" else "RGB"
        value = np.stack([np.asarray(v.convert(mode)) for v in value])
    if isinstance(value, np.ndarray):
        channels_last = True
        tensor = torch.from_numpy(np.array(value))  # a copy: arrays from PIL are read-only
    elif isinstance(value, torch.Tensor):
        channels_last = False
        tensor = value.detach().cpu()
    else:
        raise TypeError(
            f"`{name}` must be a PIL image, a list of them, a numpy array or a torch tensor, got {type(value).__name__}"
        )
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif tensor.is_floating_point():
        tensor = tensor.float()
        if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
            raise ValueError(
                f"`{name}` values must be in [0, 1] (or uint8 in [0, 255]), got "
                f"[{float(tensor.min()):.3f}, {float(tensor.max()):.3f}]"
            )
    else:
        raise TypeError(f"`{name}` must hold uint8 or floating-point values, got {tensor.dtype}")
    return tensor, channels_last


def preprocess_image(image: ImageInput) -> torch.Tensor:
    """`image` -> (B, 3, H, W) float in [0, 1].

    Accepts a PIL image or a list of them, numpy (H, W, 3) / (B, H, W, 3), or a tensor (3, H, W) / (B, 3, H, W);
    uint8 values are divided by 255, floats must already be in [0, 1].
    """
    tensor, channels_last = _batched(image, "image")
    shape = tuple(tensor.shape)
    tensor = tensor.unsqueeze(0) if tensor.ndim == 3 else tensor
    if channels_last and tensor.ndim == 4:
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        layout = "(H, W, 3) or (B, H, W, 3)" if channels_last else "(3, H, W) or (B, 3, H, W)"
        raise ValueError(f"`image` must be RGB with shape {layout}, got {shape}")
    return tensor.contiguous()


def preprocess_mask(mask_image: ImageInput) -> torch.Tensor:
    """`mask_image` -> (B, 1, H, W) float, binarised at 0.5: 1 (white) = regenerate, 0 (black) = keep.

    Accepts a PIL image (converted to "L") or a list of them, numpy (H, W) / (B, H, W) / (B, H, W, 1), or a tensor
    (H, W) / (1, H, W) / (B, H, W) / (B, 1, H, W).
    """
    tensor, channels_last = _batched(mask_image, "mask_image")
    shape = tuple(tensor.shape)
    if channels_last and tensor.ndim in (3, 4) and tensor.shape[-1] == 1:
        tensor = tensor[..., 0]
    if tensor.ndim == 2:
        tensor = tensor[None, None]
    elif tensor.ndim == 3:
        tensor = tensor[:, None]
    if tensor.ndim != 4 or tensor.shape[1] != 1:
        raise ValueError(
            "`mask_image` must be a single-channel mask: (H, W), (B, H, W), (B, 1, H, W) or a PIL image, got "
            f"shape {shape}"
        )
    return (tensor >= 0.5).float()


def token_mask_from_pixels(mask: torch.Tensor, downsample_factor: int) -> torch.BoolTensor:
    """Pixel mask (B, 1, H, W), 1 = regenerate -> (B, (H/f) * (W/f)) row-major: True where the token's f x f
    patch touches the mask."""
    return F.max_pool2d(mask, kernel_size=downsample_factor, stride=downsample_factor).flatten(1) > 0


def make_outpaint_inputs(
    image: ImageInput, box: tuple[int, int, int, int], image_size: int, fill: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place `image` into `box` of a blank `image_size` x `image_size` canvas, for outpainting/uncropping.

    Args:
        image: as for `preprocess_image`; resized (bicubic, antialiased) to the box when its size differs.
        box: `(left, top, right, bottom)` in canvas pixels, right/bottom exclusive (PIL's convention).
        image_size: the canvas side, the model's `image_size`.
        fill: grey level of the empty canvas (only visible to the tokenizer; those tokens are regenerated).

    Returns:
        `(canvas, mask)`: (B, 3, S, S) in [0, 1] and (B, 1, S, S) with 1 (regenerate) outside the box.
        Tokens whose patch straddles the box edge are regenerated too; align the box to the token grid
        (multiples of the tokenizer's `downsample_factor`) to keep every pixel of the image.

    Example: extend an image 64 px to the right: `make_outpaint_inputs(image.crop((64, 0, 256, 256)),
    box=(0, 0, 192, 256), image_size=256)`; zoom out: `box=(64, 64, 192, 192)`.
    """
    if not (isinstance(box, (tuple, list)) and len(box) == 4 and all(_is_int(v) for v in box)):
        raise ValueError(f"`box` must be 4 integers (left, top, right, bottom), got {box!r}")
    left, top, right, bottom = (int(v) for v in box)
    if not (0 <= left < right <= image_size and 0 <= top < bottom <= image_size):
        raise ValueError(
            f"`box` {tuple(box)} must satisfy 0 <= left < right <= {image_size} and 0 <= top < bottom <= {image_size}"
        )
    pixels = preprocess_image(image)
    height, width = bottom - top, right - left
    if pixels.shape[-2:] != (height, width):
        pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        pixels = pixels.clamp(0, 1)
    batch = pixels.shape[0]
    canvas = torch.full((batch, 3, image_size, image_size), float(fill))
    canvas[:, :, top:bottom, left:right] = pixels
    mask = torch.ones(batch, 1, image_size, image_size)
    mask[:, :, top:bottom, left:right] = 0.0
    return canvas, mask


def random_token_subset(region: torch.BoolTensor, strength: float, generator) -> torch.BoolTensor:
    """A random `strength` fraction (rounded) of the True positions of each row of `region` (B, N).

    With a list of generators, row i depends only on `generator[i]`.
    """
    counts = torch.floor(region.sum(dim=1).double() * strength + 0.5).long()
    noise = _uniform(region.shape, generator, region.device)
    noise = torch.where(region, noise, torch.full_like(noise, float("inf")))
    rank = noise.argsort(dim=1).argsort(dim=1)
    return region & (rank < counts.unsqueeze(1))


class MageInpaintPipeline(MagePipeline):
    r"""Inpainting, outpainting and variations with a MAGE model (same components as `MagePipeline`).

    Components:
        vqvae (`MageVQModel`): tokenizes the image and decodes the result.
        transformer (`MageForMaskedImageModeling`): predicts logits for every token.
        scheduler (`MageScheduler`): decides which masked tokens to reveal at each step.
    """

    def prepare_token_mask(
        self, pixels: torch.Tensor, mask: torch.Tensor | None, strength: float, generator
    ) -> torch.BoolTensor:
        """The tokens to regenerate (B, N): those touching `mask` (all when None), then a `strength` subset."""
        batch = pixels.shape[0]
        if mask is None:
            region = torch.ones(batch, self.transformer.config.num_tokens, dtype=torch.bool)
        else:
            region = token_mask_from_pixels(mask, self.vqvae.downsample_factor)
        region = region.to(self._execution_device)
        return region if strength >= 1.0 else random_token_subset(region, strength, generator)

    def check_image_inputs(self, pixels: torch.Tensor, mask: torch.Tensor | None, strength: float) -> None:
        if mask is not None and mask.shape[-2:] != pixels.shape[-2:]:
            raise ValueError(
                f"`mask_image` is {mask.shape[-1]}x{mask.shape[-2]} (WxH) but `image` is "
                f"{pixels.shape[-1]}x{pixels.shape[-2]}; they must have the same size"
            )
        size = self.transformer.config.image_size
        if pixels.shape[-2:] != (size, size):
            raise ValueError(
                f"`image` is {pixels.shape[-1]}x{pixels.shape[-2]} (WxH); this model expects {size}x{size}: resize or "
                "crop it first (e.g. `image.resize((size, size))`)"
            )
        if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"`strength` must be a number in [0, 1], got {strength!r}")

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput | None = None,
        num_inference_steps: int = 12,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        choice_temperature: float | None = None,
        strength: float = 1.0,
        blend_unmasked_pixels: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""Regenerate the masked part of `image`.

        Args:
            image: PIL image(s), numpy (H, W, 3)/(B, H, W, 3) or tensor (3, H, W)/(B, 3, H, W); uint8 or floats in
                [0, 1]; the model's `image_size` square.
            mask_image: same size as `image`; white/1 = regenerate, black/0 = keep (binarised at 0.5). Every token
                whose patch touches the mask is regenerated. `None`: the whole image (for variations).
            num_inference_steps, generator, class_labels, guidance_scale, guidance_schedule, choice_temperature:
                as for `MagePipeline`; the scheduler counts steps from the number of tokens masked in each row.
                The batch is the largest of the image, mask, `class_labels` and generator-list batches (the others
                1, or equal; a list of generators must have one per image).
            strength: fraction (in [0, 1], rounded per image) of the masked tokens that are actually re-sampled,
                chosen at random with `generator`. 1 = inpaint the whole mask; with `mask_image=None`, 0.2-0.6
                gives variations of `image`; 0 returns the VQ reconstruction.
            blend_unmasked_pixels: paste the original pixels back where the pixel mask is 0 (ignored for
                `output_type="latent"`).
            output_type, return_dict, callback_on_step_end, callback_on_step_end_tensor_inputs: as for
                `MagePipeline`.

        Examples:

        Returns:
            `ImagePipelineOutput` with `images`, or a tuple `(images,)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        pixels = preprocess_image(image)
        mask = None if mask_image is None else preprocess_mask(mask_image)
        self.check_image_inputs(pixels, mask, strength)
        sizes = {"image": pixels.shape[0]} if mask is None else {"image": pixels.shape[0], "mask_image": mask.shape[0]}
        batch_size = self._batch_size_of(class_labels, generator, **sizes)
        self.check_inputs(
            batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
            generator, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale, self._guidance_schedule = float(guidance_scale), guidance_schedule
        class_ids = self.prepare_class_ids(class_labels, batch_size)
        if mask_image is None and strength >= 1.0:
            logger.warning("`mask_image=None` with `strength=1.0` regenerates every token: `image` is ignored")

        device = self._execution_device
        pixels = pixels.expand(batch_size, -1, -1, -1)
        mask = None if mask is None else mask.expand(batch_size, -1, -1, -1)
        known = self.vqvae.tokenize(pixels.to(device, self.vqvae.dtype)).to(device)
        token_mask = self.prepare_token_mask(pixels, mask, float(strength), generator)
        latents = torch.where(token_mask, self.transformer.config.mask_token_id, known)
        if token_mask.any():
            latents = self.decode_iteratively(
                latents, class_ids, int(num_inference_steps), generator, choice_temperature,
                callback_on_step_end, callback_on_step_end_tensor_inputs,
            )
        else:
            logger.warning("no token to regenerate (empty mask or `strength` too small): returning the reconstruction")

        images = self.decode_latents(latents, "pt" if output_type != "latent" else "latent")
        if output_type != "latent":
            if blend_unmasked_pixels and mask is not None:
                keep = 1.0 - mask.to(images.device)
                images = images * (1.0 - keep) + pixels.to(images.device) * keep
            if output_type != "pt":
                images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def outpaint(
        self, image: ImageInput, box: tuple[int, int, int, int], fill: float = 0.5, **kwargs
    ) -> ImagePipelineOutput | tuple:
        """Outpainting/uncropping: place `image` into `box` = (left, top, right, bottom) of the canvas (resized
        to it when needed) and generate everything outside. See `make_outpaint_inputs`; other arguments as for
        `__call__`."""
        canvas, mask = make_outpaint_inputs(image, box, self.transformer.config.image_size, fill)
        return self(canvas, mask, **kwargs)

