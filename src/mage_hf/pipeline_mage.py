"""`MagePipeline`: unconditional and class-conditional image generation with MAGE.

Generation starts from a grid of `mask_token_id` and fills it in `num_inference_steps` rounds of the original
iterative decoding (`MageScheduler`); the VQGAN decoder (`vqvae`) turns the final grid into pixels.
`MageInpaintPipeline` (pipeline_mage_inpaint.py) reuses the same decoding loop on a partly known grid.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Callable

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import logging, replace_example_docstring

from .modeling_mage import MageForMaskedImageModeling
from .modeling_vqvae import MageVQModel
from .scheduling_mage import MageScheduler

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
GUIDANCE_SCHEDULES = ("constant", "linear")

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from mage_hf import DEFAULT_MODEL_PATH, MagePipeline

        >>> pipe = MagePipeline.from_pretrained(DEFAULT_MODEL_PATH)
        >>> # one generator per image: the tokens of image i do not depend on the batch it is generated in
        >>> generators = [torch.Generator().manual_seed(seed) for seed in range(4)]
        >>> images = pipe(batch_size=4, num_inference_steps=12, generator=generators).images
        >>> # class-conditional models: ids or names from `id2label`, with classifier-free guidance
        >>> images = pipe(class_labels=["Sneaker", 3], guidance_scale=2.0).images
        ```
"""


def _is_int(value) -> bool:
    """True for Python/numpy integers and 0-d integer tensors (not bools)."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _as_label_list(class_labels):
    """1-d tensors/arrays -> lists, 0-d ones -> Python scalars; anything else unchanged (checked later)."""
    if isinstance(class_labels, (torch.Tensor, np.ndarray)):
        return class_labels.tolist()
    return class_labels


class MagePipeline(DiffusionPipeline):
    r"""Generate images with a MAGE model by iterative decoding of VQ tokens.

    Components:
        vqvae (`MageVQModel`): turns the final token grid into pixels.
        transformer (`MageForMaskedImageModeling`): predicts logits for every token.
        scheduler (`MageScheduler`): decides which tokens to reveal at each step.

    `from_pretrained(path, torch_dtype=torch.bfloat16)` loads the transformer in that dtype but keeps the VQ
    decoder in float32 (`vqvae_dtype=None` loads it in `torch_dtype` too).

    Speed (see `benchmarks/bench.py`): bfloat16 is ~3x faster than float32 on CPUs with bf16 units. Either load in
    bfloat16 (least memory), or run float32 weights under autocast, which keeps the residual stream and norms in
    float32 (closest to float32) and casts the weights once per call: `with torch.autocast(pipe.device.type,
    dtype=torch.bfloat16): images = pipe(...)`. `enable_fast_vq_decode()` speeds up the final VQ decode and
    `enable_compile()` compiles the transformer; both are opt-in. Token logits are always float32.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vqvae: MageVQModel, transformer: MageForMaskedImageModeling, scheduler: MageScheduler):
        super().__init__()
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        # Pixels are in [0, 1] end to end: no [-1, 1] normalisation.
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        r"""`DiffusionPipeline.from_pretrained`, plus `vqvae_dtype` (default `torch.float32`).

        A single `torch_dtype`/`dtype` applies to the transformer; the VQ decoder is loaded in `vqvae_dtype`
        (straight from the file, never round-tripped through a lower precision). Pass `vqvae_dtype=None` to load
        it in `torch_dtype` as well, or a dict `torch_dtype={"transformer": ..., "vqvae": ...}` to choose freely.
        """
        vqvae_dtype = kwargs.pop("vqvae_dtype", torch.float32)
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        if torch_dtype is not None and dtype is not None:
            raise ValueError("pass only one of `dtype` and `torch_dtype`")
        dtype = torch_dtype if dtype is None else dtype
        if isinstance(dtype, torch.dtype) and vqvae_dtype is not None:
            dtype = {"default": dtype, "vqvae": vqvae_dtype}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ class labels
    @property
    def labels(self) -> dict[str, int]:
        """Class name -> id from the transformer config's `id2label` (comma-separated synonyms each map to the id,
        as in `DiTPipeline`); empty for unconditional models."""
        config = self.transformer.config
        if not config.class_conditional:
            return {}
        labels = {}
        for idx, names in (getattr(config, "id2label", None) or {}).items():
            for name in str(names).split(","):
                labels[name.strip()] = int(idx)
        return dict(sorted(labels.items()))

    @property
    def num_classes(self) -> int:
        """Class ids a class-conditional model accepts, [0, num_classes): `len(id2label)` when it names real
        classes, otherwise every class token of the vocabulary (one of them is the fake class)."""
        config = self.transformer.config
        id2label = getattr(config, "id2label", None) or {}
        placeholder = all(str(name) == f"LABEL_{idx}" for idx, name in id2label.items())
        return config.num_class_tokens if placeholder else min(len(id2label), config.num_class_tokens)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names -> ids via `id2label`."""
        names = [label] if isinstance(label, str) else list(label)
        labels = self.labels
        unknown = [name for name in names if name not in labels]
        if unknown:
            shown = sorted(labels)[:20]
            more = f" (and {len(labels) - 20} more)" if len(labels) > 20 else ""
            raise ValueError(f"`class_labels`: unknown class name(s) {unknown}; expected one of {shown}{more}")
        return [labels[name] for name in names]

    def prepare_class_ids(self, class_labels, batch_size: int) -> torch.LongTensor | None:
        """`class_labels` (an id or name, or one per image) -> (batch_size,) class ids, or None (unconditional)."""
        if class_labels is None:
            return None
        config = self.transformer.config
        if not config.class_conditional:
            raise ValueError(
                "`class_labels` was given but this model is unconditional (transformer config "
                "`class_conditional=False`); leave `class_labels=None`"
            )
        class_labels = _as_label_list(class_labels)
        if isinstance(class_labels, str) or _is_int(class_labels):
            class_labels = [class_labels]
        if isinstance(class_labels, (list, tuple)) and len(class_labels) == 1:
            class_labels = list(class_labels) * batch_size
        if not isinstance(class_labels, (list, tuple)):
            raise TypeError(f"`class_labels` must be an int, a str or a list of them, got {type(class_labels).__name__}")
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                ids.extend(self.get_label_ids(label))
            elif _is_int(label):
                ids.append(int(label))
            else:
                raise TypeError(f"`class_labels` entries must be ints or class names, got {label!r}")
        if len(ids) != batch_size:
            raise ValueError(f"got {len(ids)} `class_labels` for a batch of {batch_size}; expected 1 or {batch_size}")
        num_classes = self.num_classes
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"`class_labels` {bad} out of range: expected ids in [0, {num_classes - 1}]")
        fake = config.fake_class_label - config.codebook_size
        if fake in ids:
            raise ValueError(
                f"`class_labels` contains {fake}, the model's fake (unconditional) class; pass `class_labels=None` "
                "for unconditional samples"
            )
        return torch.tensor(ids, dtype=torch.long, device=self._execution_device)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _batch_size_of(class_labels, generator, **sizes: int) -> int:
        """The batch B implied by the given sizes (each 1 or B), a list of `class_labels` (1 or B) and a list of
        generators (exactly B: one per image)."""
        class_labels = _as_label_list(class_labels)
        if isinstance(class_labels, (list, tuple)):
            sizes["class_labels"] = len(class_labels)
        if isinstance(generator, (list, tuple)):
            sizes["generator"] = len(generator)
        batch = max(sizes.values())
        bad = {k: v for k, v in sizes.items() if v != batch and (v != 1 or k == "generator")}
        if bad:
            raise ValueError(
                f"inconsistent batch sizes {sizes}: expected {batch} (or 1, except for a list of generators)"
            )
        return batch

    def check_inputs(
        self, batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
        generator, callback_on_step_end_tensor_inputs,
    ) -> None:
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        if not _is_int(num_inference_steps) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
            raise ValueError(f"`guidance_scale` must be a number >= 0, got {guidance_scale!r}")
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"`guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}")
        if choice_temperature is not None and not (isinstance(choice_temperature, (int, float)) and choice_temperature >= 0):
            raise ValueError(f"`choice_temperature` must be a number >= 0 or None, got {choice_temperature!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch_size:
                raise ValueError(f"`generator` is a list of {len(generator)}; expected one per image ({batch_size})")
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise TypeError("`generator` list entries must all be torch.Generator")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` {bad} not in {self._callback_tensor_inputs}")
        self._check_components()

    def _check_components(self) -> None:
        config = self.transformer.config
        if self.scheduler.config.mask_token_id != config.mask_token_id:
            raise ValueError(
                f"scheduler `mask_token_id` ({self.scheduler.config.mask_token_id}) must equal the transformer's "
                f"({config.mask_token_id})"
            )
        if self.vqvae.config.codebook_size != config.codebook_size:
            raise ValueError(
                f"vqvae `codebook_size` ({self.vqvae.config.codebook_size}) must equal the transformer's "
                f"({config.codebook_size})"
            )
        if self.transformer.training:
            logger.warning("the transformer is in training mode (dropout on); call `pipe.transformer.eval()`")

    # ------------------------------------------------------------------ decoding
    def _logits(
        self, token_ids: torch.LongTensor, class_ids: torch.LongTensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """Codebook logits (B, N, K) for token ids (B, N); classifier-free guidance when `class_ids` are given:
        uncond + scale * (cond - uncond), in float32."""
        model, codebook = self.transformer, self.transformer.config.codebook_size

        def run(input_ids):
            return model(input_ids=input_ids).logits[:, 1:, :codebook]

        unconditional = model.mage.build_input_ids(token_ids)
        if class_ids is None or guidance_scale == 0.0:
            return run(unconditional)
        conditional = model.mage.build_input_ids(token_ids, class_ids)
        if guidance_scale == 1.0:
            return run(conditional)
        # Rows are independent, so one batched call gives the same logits as two calls.
        cond, uncond = run(torch.cat([conditional, unconditional])).float().chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def _guidance_at(self, step: int, num_inference_steps: int) -> float:
        if self._guidance_schedule == "linear":
            # Ramps from ~1 (few tokens known) to `guidance_scale` (last step).
            return 1.0 + (self._guidance_scale - 1.0) * (step + 1) / num_inference_steps
        return self._guidance_scale

    def decode_iteratively(
        self,
        latents: torch.LongTensor,
        class_ids: torch.LongTensor | None,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
        choice_temperature: float | None,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> torch.LongTensor:
        """Fill every `mask_token_id` of `latents` (B, N): the original decoding loop. Known tokens are kept."""
        mask_id = self.transformer.config.mask_token_id
        self.scheduler.set_timesteps(num_inference_steps, device=latents.device)
        self._num_timesteps = num_inference_steps
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(self.scheduler.timesteps):
                logits = self._logits(latents, class_ids, self._guidance_at(i, num_inference_steps))
                # `timesteps[i] == i`: passing the Python int spares a device->host sync (`int(t)`) per step.
                step = self.scheduler.step(logits, i, latents, generator=generator, choice_temperature=choice_temperature)
                # After the last step the original decodes the sampled grid, not the re-masked one.
                latents = step.pred_original_sample if i == num_inference_steps - 1 else step.prev_sample
                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = self._checked_callback_latents(callback_outputs.pop("latents", latents), latents)
                progress_bar.update()
        if (latents == mask_id).any():
            raise ValueError("`callback_on_step_end` returned `latents` that are still masked after the last step")
        return latents

    @staticmethod
    def _checked_callback_latents(new: Any, old: torch.LongTensor) -> torch.LongTensor:
        if not isinstance(new, torch.Tensor) or new.shape != old.shape or new.is_floating_point():
            raise ValueError(
                f"`callback_on_step_end` must return `latents` as integer token ids of shape {tuple(old.shape)}"
            )
        return new.to(old.device, torch.long)

    def decode_latents(self, token_ids: torch.LongTensor, output_type: str = "pil"):
        """Token ids (B, N) -> images: PIL list, np (B, H, W, 3) or pt (B, 3, H, W) in [0, 1]; `"latent"` returns
        the ids unchanged."""
        if output_type == "latent":
            return token_ids
        grid = self.transformer.config.token_grid_size
        images = self.vqvae.decode_tokens(token_ids.to(self.vqvae.device), grid_size=(grid, grid))
        images = images.float().clamp(0, 1)
        return images if output_type == "pt" else self.image_processor.postprocess(images, output_type=output_type)

    # ------------------------------------------------------------------ speed (opt-in)
    def enable_fast_vq_decode(self, dtype: torch.dtype | None = torch.bfloat16, channels_last: bool = True) -> None:
        """Decode token grids to pixels under bfloat16 autocast and/or channels-last (`MageVQModel.enable_fast_decode`):
        about 2.5x faster on CPU, PSNR >= 40 dB against the float32 decode; token ids are unaffected."""
        self.vqvae.enable_fast_decode(dtype=dtype, channels_last=channels_last)

    def disable_fast_vq_decode(self) -> None:
        self.vqvae.disable_fast_decode()

    def enable_compile(self, **compile_kwargs) -> None:
        """`torch.compile` the transformer in place (`nn.Module.compile`), so `pipe.transformer` keeps its type,
        config and sub-modules. `compile_kwargs` go to `torch.compile` (e.g. `mode="max-autotune"`,
        `dynamic=False`). The first call at each new batch size compiles (tens of seconds); later calls reuse it."""
        self.transformer.compile(**compile_kwargs)

    # ------------------------------------------------------------------ properties (as diffusers pipelines)
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 12,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        guidance_schedule: str = "constant",
        choice_temperature: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size: images to generate; a list of `class_labels` or of generators sets it too (each 1 or B).
            num_inference_steps: decoding steps (12 in the original script, 20 in its README).
            generator: one `torch.Generator`, or a list with one per image: image i then depends only on
                `generator[i]`, whatever the batch it is generated in.
            class_labels: class ids or names (`id2label`) for class-conditional models, one for all or one per
                image (a list, 1-d tensor or array). Unconditional models reject them.
            guidance_scale: classifier-free guidance weight, >= 0 (1 = plain conditional sampling, 0 =
                unconditional). Only used with `class_labels`.
            guidance_schedule: `"constant"`, or `"linear"` (the weight ramps from 1 to `guidance_scale` as tokens
                are revealed).
            choice_temperature: Gumbel noise scale on the confidence; the scheduler's config by default.
            output_type: `"pil"`, `"np"` ((B, H, W, 3) in [0, 1]), `"pt"` ((B, 3, H, W) in [0, 1]) or `"latent"`
                (token ids (B, N)).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.
            callback_on_step_end: called as `fn(pipe, step, timestep, {"latents": ids})` after each step; may
                return a dict to replace `latents`. `latents` are token ids (B, N), `mask_token_id` where masked.
            callback_on_step_end_tensor_inputs: the tensors passed to the callback (only `"latents"`).

        Examples:

        Returns:
            `ImagePipelineOutput` with `images`, or a tuple `(images,)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if _is_int(batch_size) and batch_size >= 1:
            batch_size = self._batch_size_of(class_labels, generator, batch_size=int(batch_size))
        self.check_inputs(
            batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
            generator, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale, self._guidance_schedule = float(guidance_scale), guidance_schedule
        class_ids = self.prepare_class_ids(class_labels, batch_size)
        if class_ids is None and guidance_scale != 1.0:
            logger.warning("`guidance_scale` is ignored without `class_labels`")

        config = self.transformer.config
        latents = torch.full(
            (batch_size, config.num_tokens), config.mask_token_id, dtype=torch.long, device=self._execution_device
        )
        latents = self.decode_iteratively(
            latents, class_ids, int(num_inference_steps), generator, choice_temperature,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )
        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

