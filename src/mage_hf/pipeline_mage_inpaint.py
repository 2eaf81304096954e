"""`MageInpaintPipeline`: inpainting, outpainting and image variations with MAGE.

All three are the same operation, as the MAGE authors describe editing: tokenize the image, mask some tokens,
run the iterative decoding over the masked tokens only (`MageScheduler` counts from the number masked in each
row), decode.

- inpainting: the tokens whose patch (`downsample_factor` x `downsample_factor` pixels) touches the pixel mask;
- outpainting (`outpaint(image, left=, top=, right=, bottom=)`): the canvas grows by whole token patches and the
  new tokens are generated window by window, each window the model's token grid, overlapping what is already
  known (MaskGIT's extrapolation); the output is larger than the input;
- zooming out / uncropping (`outpaint(image, box=...)`, `make_outpaint_inputs`): the image shrunk into a box of a
  canvas of the model's size, the tokens outside the box generated;
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

from .image_io import pil_to_rgb_array
from .pipeline_mage import MagePipeline, _check_finite, _is_int, register_with_diffusers
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
        >>> # outpainting: a 384x256 image, 64 px generated on each side (window by window)
        >>> wider = pipe.outpaint(image, left=64, right=64, generator=torch.manual_seed(0)).images[0]
        >>> # zooming out: the image shrunk into the centre of a 256x256 canvas, the border generated
        >>> zoomed_out = pipe.outpaint(image, box=(64, 64, 192, 192)).images[0]
        >>> # variations: re-sample 40% of the tokens
        >>> variations = pipe(image, strength=0.4, generator=[torch.Generator().manual_seed(s) for s in range(4)]).images
        ```
"""


# ITU-R 601-2 luma, the weights of PIL's `convert("L")`, so RGB masks threshold as they always did.
MASK_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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
        if name == "mask_image":
            # Luma of every PIL mode scaled by its own range (`convert("L")` saturates 16-bit masks); transparent
            # parts of a mask count as black (keep), so a mask painted on a transparent layer means what it shows.
            value = np.stack([pil_to_rgb_array(v, background=(0, 0, 0)) @ MASK_LUMA_WEIGHTS for v in value])
        else:  # every PIL mode scaled by its own range (16-bit, palette, transparency), see `image_io`
            value = np.stack([pil_to_rgb_array(v) for v in value])
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
        _check_finite(tensor, name)
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

    Threshold: a grey value >= 0.5 regenerates, so uint8 / PIL values 128-255 regenerate and 0-127 keep; float
    masks must lie in [0, 1] (NaN/inf raise a ValueError).

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

    @staticmethod
    def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A binary mask (B, 1, h, w) -> (B, 1, *size), nearest neighbour (it stays binary, so the 0.5 threshold
        keeps its meaning); a mask of another aspect ratio is stretched."""
        if tuple(mask.shape[-2:]) == tuple(size):
            return mask
        return F.interpolate(mask, size=tuple(size), mode="nearest-exact")

    def check_image_inputs(self, pixels: torch.Tensor, mask: torch.Tensor | None, strength: float) -> None:
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
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
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
            mask_image: white/1 = regenerate, black/0 = keep, binarised at 0.5 (uint8/PIL grey 128-255 regenerate,
                0-127 keep). A mask of another size than `image` is resized to it (nearest neighbour). Every token
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
        if mask is not None:
            mask = self.resize_mask(mask, pixels.shape[-2:])
        sizes = {"image": pixels.shape[0]} if mask is None else {"image": pixels.shape[0], "mask_image": mask.shape[0]}
        batch_size = self._batch_size_of(class_labels, generator, **sizes)
        class_ids = self._start_call(
            batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
            generator, callback_on_step_end_tensor_inputs, class_labels,
        )
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

    @torch.no_grad()
    def outpaint(
        self,
        image: ImageInput,
        left: int = 0,
        top: int = 0,
        right: int = 0,
        bottom: int = 0,
        box: tuple[int, int, int, int] | None = None,
        fill: float = 0.5,
        window_stride: int | None = None,
        num_inference_steps: int = 12,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
        choice_temperature: float | None = None,
        blend_unmasked_pixels: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""Outpainting: extend the canvas of `image` by `left`/`top`/`right`/`bottom` pixels and generate the new
        border; or, with `box`, zoom out inside a canvas of the model's size.

        Extending (`left`, `top`, `right`, `bottom`): each margin is rounded up to whole token patches
        (`vqvae.downsample_factor` pixels), so the output is (H + top + bottom) x (W + left + right) after
        rounding, larger than the input. The image is tokenized as it is (its sides must be multiples of the patch
        size); the new tokens are generated window by window, each window the model's token grid
        (`image_size / downsample_factor` tokens a side), windows `window_stride` tokens apart (default: half a
        window; less than a window, so that they overlap), visited from the one centred on the image outwards.
        Each window keeps every token already known (the image's and those earlier windows generated) and
        regenerates the others with the usual decoding; windows with nothing left to generate are skipped.
        The VQ decoder then decodes the whole grid at once. The image's own tokens are kept exactly;
        `blend_unmasked_pixels=True` pastes its pixels back too. The result depends only on the inputs and
        `generator` (with a list of generators, image i only on `generator[i]`). The canvas must be at least one
        window in each direction.

        Zooming out (`box=(left, top, right, bottom)` in canvas pixels): the image is resized into the box of an
        `image_size` canvas and everything outside is generated; the output has the model's size (see
        `make_outpaint_inputs`). `fill` is the grey the empty canvas shows the tokenizer there.

        Other arguments as for `__call__`; `callback_on_step_end` is called at every step of every window.
        """
        if box is not None:
            if any((left, top, right, bottom)):
                raise ValueError("pass either `box` (zoom out) or the margins `left`/`top`/`right`/`bottom`, not both")
            canvas, mask = make_outpaint_inputs(image, box, self.transformer.config.image_size, fill)
            return self(
                canvas, mask, num_inference_steps=num_inference_steps, generator=generator, class_labels=class_labels,
                guidance_scale=guidance_scale, guidance_schedule=guidance_schedule,
                choice_temperature=choice_temperature, blend_unmasked_pixels=blend_unmasked_pixels,
                output_type=output_type, return_dict=return_dict, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            )
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        factor, grid = self.vqvae.downsample_factor, self.transformer.config.token_grid_size
        margins = _token_margins(dict(left=left, top=top, right=right, bottom=bottom), factor)
        pixels = preprocess_image(image)
        height, width = pixels.shape[-2:]
        if height % factor or width % factor:
            raise ValueError(
                f"`image` is {width}x{height} (WxH); outpainting needs sides that are multiples of the token patch "
                f"({factor} px): crop or resize it first"
            )
        rows = height // factor + margins["top"] + margins["bottom"]
        cols = width // factor + margins["left"] + margins["right"]
        if rows < grid or cols < grid:
            raise ValueError(
                f"the outpainted canvas would be {cols}x{rows} tokens (WxH); it must be at least one window, "
                f"{grid}x{grid} tokens ({grid * factor} px a side): enlarge the image or the margins"
            )
        stride = grid // 2 if window_stride is None else window_stride
        if not _is_int(stride) or not 1 <= stride < grid:
            raise ValueError(
                f"`window_stride` must be an integer in [1, {grid - 1}] tokens (windows must overlap), "
                f"got {window_stride!r}"
            )
        batch_size = self._batch_size_of(class_labels, generator, image=pixels.shape[0])
        class_ids = self._start_call(
            batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
            generator, callback_on_step_end_tensor_inputs, class_labels,
        )

        device, mask_id = self._execution_device, self.transformer.config.mask_token_id
        pixels = pixels.expand(batch_size, -1, -1, -1)
        known = self.vqvae.tokenize(pixels.to(device, self.vqvae.dtype)).to(device)
        tokens = torch.full((batch_size, rows, cols), mask_id, dtype=torch.long, device=device)
        image_rows = slice(margins["top"], margins["top"] + height // factor)
        image_cols = slice(margins["left"], margins["left"] + width // factor)
        tokens[:, image_rows, image_cols] = known.view(batch_size, height // factor, width // factor)
        for row, col in outpaint_windows(rows, cols, grid, stride, image_rows, image_cols):
            window = tokens[:, row : row + grid, col : col + grid]
            if not bool((window == mask_id).any()):
                continue
            filled = self.decode_iteratively(
                window.reshape(batch_size, grid * grid), class_ids, int(num_inference_steps), generator,
                choice_temperature, callback_on_step_end, callback_on_step_end_tensor_inputs,
            )
            tokens[:, row : row + grid, col : col + grid] = filled.view(batch_size, grid, grid)

        token_ids = tokens.view(batch_size, rows * cols)
        if output_type == "latent":
            images = token_ids
        else:
            images = self.vqvae.decode_tokens(token_ids.to(self.vqvae.device), grid_size=(rows, cols))
            images = images.float().clamp(0, 1)
            if blend_unmasked_pixels:
                top_px, left_px = margins["top"] * factor, margins["left"] * factor
                images[:, :, top_px : top_px + height, left_px : left_px + width] = pixels.to(images.device)
            if output_type != "pt":
                images = self.image_processor.postprocess(images, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def _token_margins(margins: dict[str, int], factor: int) -> dict[str, int]:
    """Pixel margins -> token margins, each rounded up to whole `factor`-pixel patches."""
    for name, value in margins.items():
        if not _is_int(value) or value < 0:
            raise ValueError(f"`{name}` must be an integer number of pixels >= 0, got {value!r}")
    if not any(margins.values()):
        raise ValueError("outpainting needs at least one of `left`, `top`, `right`, `bottom` > 0 (or a `box`)")
    return {name: -(-int(value) // factor) for name, value in margins.items()}


def _window_starts(length: int, window: int, stride: int, known: slice) -> list[int]:
    """Window offsets along one axis of `length` tokens: the window centred on the `known` span first, then
    outwards `stride` apart on each side, the last ones flush with the edges; ordered by distance from the first."""
    last = length - window
    centre = min(max((known.start + known.stop - window) // 2, 0), last)
    starts = [centre]
    for direction, edge in ((-1, 0), (1, last)):
        position = centre
        while position != edge:
            position = max(position - stride, edge) if direction < 0 else min(position + stride, edge)
            starts.append(position)
    return sorted(set(starts), key=lambda start: (abs(start - centre), start))


def outpaint_windows(rows: int, cols: int, window: int, stride: int, image_rows: slice, image_cols: slice
                     ) -> list[tuple[int, int]]:
    """(row, col) token offsets of the windows that cover a `rows` x `cols` canvas, nearest to the image first
    (by the larger of the row and column distance, then the smaller), so each window overlaps tokens that are
    already known."""
    row_starts = _window_starts(rows, window, stride, image_rows)
    col_starts = _window_starts(cols, window, stride, image_cols)

    def level(start: int, starts: list[int]) -> int:  # windows (strides) away from the first, centred one
        return -(-abs(start - starts[0]) // stride)

    windows = [(r, c) for r in row_starts for c in col_starts]
    return sorted(windows, key=lambda rc: (
        max(level(rc[0], row_starts), level(rc[1], col_starts)),
        level(rc[0], row_starts) + level(rc[1], col_starts), rc,
    ))


register_with_diffusers(MageInpaintPipeline)
