"""`MagePipeline`: unconditional and class-conditional image generation with MAGE."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import logging

from .modeling_mage import MageForMaskedImageModeling
from .modeling_vqvae import MageVQModel
from .scheduling_mage import MageScheduler

logger = logging.get_logger(__name__)


class MagePipeline(DiffusionPipeline):
    r"""Generate images with a MAGE model by iterative decoding of VQ tokens.

    Components:
        vqvae (`MageVQModel`): turns the final token grid into pixels.
        transformer (`MageForMaskedImageModeling`): predicts logits for every token.
        scheduler (`MageScheduler`): decides which tokens to reveal at each step.

    Example:
        ```py
        >>> from mage_hf import MagePipeline, DEFAULT_MODEL_PATH
        >>> pipe = MagePipeline.from_pretrained(DEFAULT_MODEL_PATH)
        >>> images = pipe(batch_size=4, generator=torch.manual_seed(0)).images
        >>> images = pipe(class_labels=["Sneaker", "Bag"], guidance_scale=2.0).images
        ```
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, vqvae: MageVQModel, transformer: MageForMaskedImageModeling, scheduler: MageScheduler):
        super().__init__()
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=False)

    # ------------------------------------------------------------------ labels
    @property
    def labels(self) -> dict[str, int]:
        """Class name -> id, from the transformer config's `id2label` (empty for unconditional models)."""
        id2label = getattr(self.transformer.config, "id2label", None) or {}
        if not self.transformer.config.class_conditional:
            return {}
        return {str(name): int(idx) for idx, name in id2label.items()}

    @property
    def num_classes(self) -> int:
        """Classes a class-conditional model accepts: `len(id2label)` when it names real classes, otherwise
        every class token of the vocabulary."""
        config = self.transformer.config
        id2label = getattr(config, "id2label", None) or {}
        placeholder = all(str(name) == f"LABEL_{idx}" for idx, name in id2label.items())
        return config.num_class_tokens if placeholder else len(id2label)

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        """Class names -> ids via `id2label`."""
        names = [label] if isinstance(label, str) else list(label)
        unknown = [name for name in names if name not in self.labels]
        if unknown:
            raise ValueError(f"unknown class label(s) {unknown}; expected one of {sorted(self.labels)}")
        return [self.labels[name] for name in names]

    def _class_label_tensor(self, class_labels, batch_size: int) -> torch.LongTensor | None:
        if class_labels is None:
            return None
        config = self.transformer.config
        if not config.class_conditional:
            raise ValueError(
                "`class_labels` was given but this model is unconditional (transformer config `class_conditional=False`)"
            )
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels] * batch_size
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.tolist()
        ids = [self.get_label_ids(c)[0] if isinstance(c, str) else int(c) for c in class_labels]
        num_classes = self.num_classes
        bad = [c for c in ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"`class_labels` {bad} out of range: expected ids in [0, {num_classes - 1}]")
        if len(ids) != batch_size:
            raise ValueError(f"got {len(ids)} `class_labels` for `batch_size` {batch_size}")
        return torch.tensor(ids, device=self._execution_device)

    # ------------------------------------------------------------------ checks
    def check_inputs(self, batch_size, num_inference_steps, guidance_scale, output_type, callback_on_step_end_tensor_inputs):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        if guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be >= 0, got {guidance_scale}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        bad = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` {bad} not in {self._callback_tensor_inputs}")

    # ------------------------------------------------------------------ core
    def _logits(self, token_ids: torch.LongTensor, class_ids: torch.LongTensor | None, guidance_scale: float) -> torch.Tensor:
        """Codebook logits (B, N, K) for the image tokens; classifier-free guidance when `class_ids` are given."""
        config = self.transformer.config
        model = self.transformer
        if class_ids is None:
            input_ids = model.mage.build_input_ids(token_ids)
            logits = model(input_ids=input_ids).logits
            return logits[:, 1:, : config.codebook_size]
        conditional = model.mage.build_input_ids(token_ids, class_ids)
        if guidance_scale == 1.0:
            return model(input_ids=conditional).logits[:, 1:, : config.codebook_size]
        unconditional = model.mage.build_input_ids(token_ids)
        both = model(input_ids=torch.cat([conditional, unconditional])).logits[:, 1:, : config.codebook_size].float()
        cond, uncond = both.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def decode_latents(self, token_ids: torch.LongTensor, output_type: str):
        if output_type == "latent":
            return token_ids
        grid = self.transformer.config.token_grid_size
        images = self.vqvae.decode_tokens(token_ids, grid_size=(grid, grid)).float().clamp(0, 1)
        if output_type == "pt":
            return images
        return self.image_processor.postprocess(images * 2 - 1, output_type=output_type)

    @torch.no_grad()
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
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images.

        Args:
            batch_size: images to generate (taken from `class_labels` when that is a list).
            num_inference_steps: decoding steps (12 in the original script, 20 in its README).
            generator: one `torch.Generator`, or a list with one per image (image i then depends only on it).
            class_labels: class ids or names (`id2label`) for class-conditional models.
            guidance_scale: classifier-free guidance weight (1 = plain conditional sampling).
            guidance_schedule: `"constant"`, or `"linear"` (the weight ramps from 1 to `guidance_scale` as tokens
                are revealed).
            choice_temperature: Gumbel noise scale on the confidence; the scheduler's config by default.
            output_type: `"pil"`, `"np"`, `"pt"` or `"latent"` (token ids (B, N)).
            callback_on_step_end: called as `fn(pipe, step, timestep, {"latents": ids})` after each step; may
                return a dict to replace `latents`. `latents` are token ids (B, N), `mask_token_id` where masked.

        Returns:
            `ImagePipelineOutput` with `images`, or a tuple `(images,)`.
        """
        if isinstance(class_labels, (list, tuple, torch.Tensor)):
            batch_size = len(class_labels)
        self.check_inputs(batch_size, num_inference_steps, guidance_scale, output_type, callback_on_step_end_tensor_inputs)
        if guidance_schedule not in ("constant", "linear"):
            raise ValueError(f"`guidance_schedule` must be 'constant' or 'linear', got {guidance_schedule!r}")
        class_ids = self._class_label_tensor(class_labels, batch_size)
        if class_ids is None and guidance_scale != 1.0:
            logger.warning("`guidance_scale` is ignored without `class_labels`")

        device = self._execution_device
        mask_id = self.transformer.config.mask_token_id
        latents = torch.full((batch_size, self.transformer.config.num_tokens), mask_id, dtype=torch.long, device=device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = num_inference_steps
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(self.scheduler.timesteps):
                scale = guidance_scale
                if guidance_schedule == "linear":
                    scale = 1.0 + (guidance_scale - 1.0) * (i + 1) / num_inference_steps
                logits = self._logits(latents, class_ids, scale)
                step = self.scheduler.step(logits, t, latents, generator=generator, choice_temperature=choice_temperature)
                # After the last step the original decodes the sampled grid, not the re-masked one.
                latents = step.pred_original_sample if i == num_inference_steps - 1 else step.prev_sample
                if callback_on_step_end is not None:
                    callback_kwargs = {k: locals()[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents) if callback_outputs else latents
                progress_bar.update()

        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
