"""`MagePipeline`: unconditional and class-conditional image generation with MAGE.

Generation starts from a grid of `mask_token_id` and fills it in `num_inference_steps` rounds of the original
iterative decoding (`MageScheduler`); the VQGAN decoder (`vqvae`) turns the final grid into pixels.
`MageInpaintPipeline` (pipeline_mage_inpaint.py) reuses the same decoding loop on a partly known grid.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, Callable

import numpy as np
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import logging, replace_example_docstring

from .remote_code import (
    COMPONENT_ENTRY_MODULE,
    COMPONENT_MODULES,
    add_transformer_code,
    update_json,
    write_component_module,
    write_entry_module,
)
from .modeling_mage import MageForMaskedImageModeling
from .modeling_vqvae import MageVQModel
from .scheduling_mage import MageScheduler
from .weights_check import check_safetensors_file

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


def _check_guidance(scale, schedule, prefix: str = "", allow_none: bool = False) -> None:
    """`{prefix}guidance_scale` a finite number >= 0 and `{prefix}guidance_schedule` in `GUIDANCE_SCHEDULES`
    (either may be None when `allow_none`)."""
    if not (allow_none and scale is None) and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale >= 0 and math.isfinite(scale))
    ):
        raise ValueError(f"`{prefix}guidance_scale` must be a finite number >= 0, got {scale!r}")
    if not (allow_none and schedule is None) and schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"`{prefix}guidance_schedule` must be one of {GUIDANCE_SCHEDULES}, got {schedule!r}")


def _is_int(value) -> bool:
    """True for Python/numpy integers and 0-d integer tensors (not bools)."""
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _as_label_list(class_labels):
    """1-d tensors/arrays -> lists, 0-d ones -> Python scalars; a (B, 1) tensor/array or a list of one-element
    lists -> a flat list (as `DiTPipeline` accepts); anything else unchanged (checked later)."""
    if isinstance(class_labels, (torch.Tensor, np.ndarray)):
        class_labels = class_labels.tolist()
    if isinstance(class_labels, (list, tuple)) and class_labels and all(
        isinstance(label, (list, tuple)) and len(label) == 1 for label in class_labels
    ):
        class_labels = [label[0] for label in class_labels]
    return class_labels


def _component_names(folder: str | os.PathLike) -> list[str]:
    """The component sub-folders named in `model_index.json` (none when it is missing or unreadable)."""
    try:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return []
    return [key for key, value in index.items() if not key.startswith("_") and isinstance(value, list)]


def _weight_files(folder: str | os.PathLike) -> list[str]:
    """The safetensors weights files of one component folder (sharded ones included), sorted."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors"))


def _safetensors_keys(path: str) -> set[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            return set(handle.keys())
    except (SafetensorError, OSError) as error:
        raise ValueError(f"weights file {path} is truncated or corrupt ({error}); download or save it again") from None


def _load_transformer_processor(transformer):
    """The `MageImageProcessor` of the transformer's folder, or one built from its config."""
    from .image_processing_mage import MageImageProcessor

    folder = getattr(transformer.config, "_name_or_path", None)
    if folder and os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        return MageImageProcessor.from_pretrained(folder)
    return MageImageProcessor.from_mage_config(transformer.config)


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    """A ValueError naming the argument when a floating tensor holds NaN or inf."""
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"`{name}` contains NaN or inf values; expected finite values")


class MagePipeline(DiffusionPipeline):
    r"""Generate images with a MAGE model by iterative decoding of VQ tokens.

    Components:
        vqvae (`MageVQModel`): turns the final token grid into pixels.
        transformer (`MageForMaskedImageModeling`): predicts logits for every token.
        scheduler (`MageScheduler`): decides which tokens to reveal at each step.

    `from_pretrained(path, torch_dtype=torch.bfloat16)` is the fast path for the whole call: the transformer runs
    in bfloat16, guidance and sampling on float32 logits, and the VQ decode under bfloat16 autocast
    (`enable_fast_vq_decode`, switched on by that load); the VQ weights stay float32, so the tokenizer's encode
    (inpainting) still gives exact token ids. `pipe.disable_fast_vq_decode()` (or `fast_vq_decode=False` in
    `from_pretrained`) gives the exact float32 decode back; `vqvae_dtype=None` loads the VQ model in `torch_dtype`
    too.

    Speed (see `benchmarks/bench.py`): bfloat16 is ~3x faster than float32 on CPUs with bf16 units. Either load in
    bfloat16 (least memory), or run float32 weights under autocast, which keeps the residual stream and norms in
    float32 (closest to float32) and casts the weights once per call: `with torch.autocast(pipe.device.type,
    dtype=torch.bfloat16): images = pipe(...)`. `enable_compile()` compiles the transformer (opt-in). Token logits
    are always float32.

    Loading: `MagePipeline.from_pretrained` refuses a folder whose weights do not match its configs (missing or
    unexpected tensors, e.g. a `num_hidden_layers` that is not the checkpoint's) unless
    `allow_mismatched_weights=True`. `diffusers.DiffusionPipeline.from_pretrained(folder)` also works once this module
    is imported (it registers the MAGE pipelines with diffusers), and `save_pretrained(dir, include_code=True)`
    (implied by `push_to_hub=True`) writes a folder that loads with `trust_remote_code=True` where mage-hf is not
    installed.
    """

    model_cpu_offload_seq = "transformer->vqvae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vqvae: MageVQModel,
        transformer: MageForMaskedImageModeling,
        scheduler: MageScheduler,
        default_guidance_scale: float | None = None,
        default_guidance_schedule: str | None = None,
    ):
        super().__init__()
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        # The guidance a class-conditional call uses when the caller passes none: chosen by measurement for each
        # trained model and saved with it in `model_index.json` (as diffusers pipelines keep their non-module
        # settings), so the plain `pipe(class_labels=...)` call gives the quality the model was evaluated at.
        _check_guidance(default_guidance_scale, default_guidance_schedule, "default_", allow_none=True)
        self.register_to_config(
            default_guidance_scale=None if default_guidance_scale is None else float(default_guidance_scale),
            default_guidance_schedule=default_guidance_schedule,
        )
        # Pixels are in [0, 1] end to end: no [-1, 1] normalisation.
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        r"""`DiffusionPipeline.from_pretrained`, plus:

        - `vqvae_dtype` (default `torch.float32`): a single `torch_dtype`/`dtype` applies to the transformer; the VQ
          model is loaded in `vqvae_dtype` (straight from the file, never round-tripped through a lower precision).
          Pass `vqvae_dtype=None` to load it in `torch_dtype` as well, or a dict
          `torch_dtype={"transformer": ..., "vqvae": ...}` to choose freely.
        - `fast_vq_decode` (default: on when the transformer is loaded in bfloat16 and the VQ model is not): decode
          under bfloat16 autocast (`enable_fast_vq_decode`); `False` keeps the exact float32 decode.
        - `allow_mismatched_weights` (default False): a component whose weights file misses tensors its config
          needs, or holds tensors it does not use, raises a ValueError naming them unless this is True (then the
          library's warning is all, and missing tensors keep their random initialisation).

        Weights files of a local folder are checked first: a truncated or corrupt safetensors file raises a
        ValueError naming it.
        """
        vqvae_dtype = kwargs.pop("vqvae_dtype", torch.float32)
        fast_vq_decode = kwargs.pop("fast_vq_decode", None)
        allow_mismatched_weights = kwargs.pop("allow_mismatched_weights", False)
        torch_dtype, dtype = kwargs.pop("torch_dtype", None), kwargs.pop("dtype", None)
        if torch_dtype is not None and dtype is not None:
            raise ValueError("pass only one of `dtype` and `torch_dtype`")
        dtype = torch_dtype if dtype is None else dtype
        if isinstance(dtype, torch.dtype) and vqvae_dtype is not None:
            dtype = {"default": dtype, "vqvae": vqvae_dtype}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if os.path.isdir(pretrained_model_name_or_path):
            for name in _component_names(pretrained_model_name_or_path):
                for path in _weight_files(os.path.join(pretrained_model_name_or_path, name)):
                    check_safetensors_file(path)
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not allow_mismatched_weights:
            pipe.check_loaded_weights()
        if fast_vq_decode is None:
            fast_vq_decode = pipe.transformer.dtype == torch.bfloat16 and pipe.vqvae.dtype != torch.bfloat16
        if fast_vq_decode:
            pipe.enable_fast_vq_decode()
        pipe.transformer_image_processor()  # read now: the copy written by `save_pretrained` must not need the source
        return pipe

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        """`model_index.json` as read by `from_pretrained` (local folders and Hub downloads alike). A folder saved
        with `include_code=True` names its own code files there; when the class doing the loading is mage-hf's
        own, they are replaced by the installed modules, so no code from the folder runs."""
        config = super()._dict_from_json_file(json_file)
        if isinstance(config.get("_class_name"), (list, tuple)):
            config["_class_name"] = config["_class_name"][1]
            for name, (module, class_name) in COMPONENT_MODULES.items():
                if list(config.get(name) or []) in ([module, class_name], [COMPONENT_ENTRY_MODULE, class_name]):
                    config[name] = [f"{__package__}.{module}", class_name]
        return config

    def save_pretrained(self, save_directory: str | os.PathLike, *args, include_code: bool | None = None, **kwargs):
        r"""`DiffusionPipeline.save_pretrained`, plus what the loaders need beyond the components' weights:

        - `transformer/preprocessor_config.json`: the `MageImageProcessor` the pipeline was loaded with (or one
          matching the transformer config), so `MageImageProcessor.from_pretrained(dir, subfolder="transformer")`
          and `transformers.pipeline("image-feature-extraction", model=f"{dir}/transformer")` work on the copy;
        - `transformer/config.json` and `preprocessor_config.json` list every Auto class that fits the folder in
          `auto_map` (`AutoModel`, `AutoModelForMaskedImageModeling`, `AutoModelForImageClassification`,
          `AutoImageProcessor`), with the code beside them, for `trust_remote_code=True` where mage-hf is absent;
        - `include_code=True` (the default when `push_to_hub=True`): the folder is saved for the Hub: the code of the
          pipeline and of each component is copied in and `model_index.json` names it, so
          `DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` loads it without mage-hf installed
          (with mage-hf installed, `MagePipeline.from_pretrained(dir)` still uses the installed code). Without it,
          `model_index.json` names the installed package (`mage_hf.*`), for `MagePipeline.from_pretrained` and, once
          mage-hf's pipelines are imported, `DiffusionPipeline.from_pretrained`.
        """
        push_to_hub = kwargs.pop("push_to_hub", False)
        hub_options = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private", "create_pr", "token")
                       if key in kwargs}
        include_code = bool(push_to_hub) if include_code is None else bool(include_code)
        super().save_pretrained(save_directory, *args, **kwargs)
        self._save_loader_files(save_directory, include_code)
        if push_to_hub:
            self._push_folder(save_directory, **hub_options)

    def _save_loader_files(self, save_directory: str | os.PathLike, include_code: bool) -> None:
        transformer_dir = os.path.join(save_directory, "transformer")
        processor = self.transformer_image_processor()
        if processor is not None:
            processor.save_pretrained(transformer_dir)
        add_transformer_code(transformer_dir)
        index_path = os.path.join(save_directory, "model_index.json")
        class_name = type(self).__name__
        if include_code:
            entry = write_entry_module(save_directory, [self._module_name()])
            entries = {"_class_name": [entry, class_name]}
            for name, (module, component_class) in COMPONENT_MODULES.items():
                entry = write_component_module(os.path.join(save_directory, name), module, component_class)
                entries[name] = [entry, component_class]
        else:
            entries = {"_class_name": class_name}
            entries.update({
                name: [f"{__package__}.{module}", component_class]
                for name, (module, component_class) in COMPONENT_MODULES.items()
            })
        update_json(index_path, **entries)

    @classmethod
    def _module_name(cls) -> str:
        return cls.__module__.rsplit(".", 1)[-1]

    def _push_folder(self, save_directory, repo_id=None, commit_message=None, private=None, create_pr=False,
                     token=None) -> None:
        """Upload the complete folder (after the loader files are written), as `save_pretrained(push_to_hub=True)`."""
        from huggingface_hub import create_repo

        repo_id = repo_id or os.path.basename(os.path.normpath(save_directory))
        repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
        self._upload_folder(save_directory, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)

    def transformer_image_processor(self):
        """The `MageImageProcessor` saved beside the transformer: the one the pipeline was loaded with, else one
        matching the transformer config (`MageImageProcessor.from_mage_config`)."""
        processor = getattr(self, "_transformer_image_processor", None)
        if processor is None:
            processor = _load_transformer_processor(self.transformer)
            self._transformer_image_processor = processor
        return processor

    def check_loaded_weights(self) -> None:
        """Raise a ValueError when the weights file of the transformer or the VQ model holds other tensors than its
        module (missing ones stay randomly initialised, unexpected ones are dropped): the config does not describe
        the checkpoint. Components without a local safetensors file are not checked."""
        for name in ("transformer", "vqvae"):
            module = getattr(self, name)
            folder = getattr(module.config, "_name_or_path", None)
            files = _weight_files(folder) if folder and os.path.isdir(folder) else []
            if not files:
                continue
            stored = set()
            for path in files:
                stored |= _safetensors_keys(path)
            expected = set(module.state_dict().keys())
            missing, unexpected = sorted(expected - stored), sorted(stored - expected)
            if missing or unexpected:
                raise ValueError(
                    f"`{name}` weights in {folder} do not match its config.json: {len(missing)} missing "
                    f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}; fix the config (e.g. "
                    "`num_hidden_layers`) or pass `allow_mismatched_weights=True` to load anyway"
                )

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
        _check_guidance(guidance_scale, guidance_schedule)
        if choice_temperature is not None and not (
            isinstance(choice_temperature, (int, float))
            and choice_temperature >= 0
            and math.isfinite(choice_temperature)
        ):
            raise ValueError(f"`choice_temperature` must be a finite number >= 0 or None, got {choice_temperature!r}")
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
    def _class_columns(self, class_ids: torch.LongTensor | None, batch_size: int, device) -> dict[str, torch.Tensor]:
        """Position-0 token ids, built once per call: `"uncond"` (B, 1) the fake class, `"cond"` (B, 1) the class
        tokens, `"both"` (2B, 1) cond then uncond for one batched guidance call."""
        config = self.transformer.config
        uncond = torch.full((batch_size, 1), config.fake_class_label, dtype=torch.long, device=device)
        columns = {"uncond": uncond}
        if class_ids is not None:
            columns["cond"] = (config.codebook_size + class_ids.to(device).long()).view(-1, 1)
            columns["both"] = torch.cat([columns["cond"], uncond])
        return columns

    def _model_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Codebook logits (B', N, K) for ids (B', 1 + N) that the pipeline built itself: the transformer's forward
        without its input checks (whose min/max reductions cost a device->host sync per step)."""
        model = self.transformer
        return model.predict_logits(input_ids)[:, 1:, : model.config.codebook_size]

    def _logits(
        self, token_ids: torch.LongTensor, columns: dict[str, torch.Tensor], guidance_scale: float
    ) -> torch.Tensor:
        """Codebook logits (B, N, K) for token ids (B, N); classifier-free guidance when class tokens are given:
        uncond + scale * (cond - uncond), in float32."""
        if "cond" not in columns or guidance_scale == 0.0:
            return self._model_logits(torch.cat([columns["uncond"], token_ids], dim=1))
        if guidance_scale == 1.0:
            return self._model_logits(torch.cat([columns["cond"], token_ids], dim=1))
        # Rows are independent, so one batched call gives the same logits as two calls.
        both = torch.cat([columns["both"], token_ids.repeat(2, 1)], dim=1)
        cond, uncond = self._model_logits(both).float().chunk(2)
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
        columns = self._class_columns(class_ids, latents.shape[0], latents.device)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(self.scheduler.timesteps):
                logits = self._logits(latents, columns, self._guidance_at(i, num_inference_steps))
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

    def _checked_callback_latents(self, new: Any, old: torch.LongTensor) -> torch.LongTensor:
        """Latents returned by a callback: integer ids of the same shape, codebook ids or `mask_token_id` (one
        check per replaced tensor, only when the callback returned a new one)."""
        if new is old:
            return old
        if (
            not isinstance(new, torch.Tensor)
            or new.shape != old.shape
            or new.is_floating_point()
            or new.dtype == torch.bool
        ):
            raise ValueError(
                f"`callback_on_step_end` must return `latents` as integer token ids of shape {tuple(old.shape)}"
            )
        new = new.to(old.device, torch.long)
        config = self.transformer.config
        valid = ((new >= 0) & (new < config.codebook_size)) | (new == config.mask_token_id)
        if not bool(valid.all()):
            raise ValueError(
                f"`callback_on_step_end` returned `latents` outside the codebook [0, {config.codebook_size - 1}] "
                f"(or `mask_token_id` {config.mask_token_id})"
            )
        return new

    @torch.no_grad()
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
        `dynamic=False`). The first call at each new batch size compiles (tens of seconds); later calls reuse it.
        The sampling loop calls `transformer.predict_logits` (the forward without input checks), which
        `nn.Module.compile` does not reach, so that method is compiled too."""
        self.transformer.compile(**compile_kwargs)
        self.transformer.predict_logits = torch.compile(self.transformer.predict_logits, **compile_kwargs)

    # ------------------------------------------------------------------ guidance defaults
    def set_default_guidance(self, guidance_scale: float | None, guidance_schedule: str | None = None) -> None:
        """Make `guidance_scale` / `guidance_schedule` what calls without those arguments use (None: back to 1 /
        `"constant"`); saved with the pipeline (`model_index.json`) by `save_pretrained`."""
        _check_guidance(guidance_scale, guidance_schedule, "default_", allow_none=True)
        self.register_to_config(
            default_guidance_scale=None if guidance_scale is None else float(guidance_scale),
            default_guidance_schedule=guidance_schedule,
        )

    def resolve_guidance(self, guidance_scale: float | None, guidance_schedule: str | None) -> tuple[float, str]:
        """The guidance a call uses: the arguments where given, else the pipeline's saved defaults
        (`default_guidance_scale` / `default_guidance_schedule` in its config), else 1.0 / `"constant"`."""
        config = self.config
        if guidance_scale is None:
            guidance_scale = config.get("default_guidance_scale")
            guidance_scale = 1.0 if guidance_scale is None else guidance_scale
        if guidance_schedule is None:
            guidance_schedule = config.get("default_guidance_schedule") or "constant"
        return guidance_scale, guidance_schedule

    def _start_call(
        self, batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
        generator, callback_on_step_end_tensor_inputs, class_labels,
    ) -> torch.LongTensor | None:
        """What every sampling call does first: fill in the saved guidance defaults, check the arguments, record the
        guidance for the `guidance_scale` property, and return the class ids (B,) or None."""
        guidance_scale, guidance_schedule = self.resolve_guidance(guidance_scale, guidance_schedule)
        self.check_inputs(
            batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
            generator, callback_on_step_end_tensor_inputs,
        )
        self._guidance_scale, self._guidance_schedule = float(guidance_scale), guidance_schedule
        return self.prepare_class_ids(class_labels, batch_size)

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
        guidance_scale: float | None = None,
        guidance_schedule: str | None = None,
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
                unconditional). Only used with `class_labels`. Default: the pipeline's `default_guidance_scale`
                (saved in `model_index.json` with the model, chosen by measurement for the embedded default), else 1.
            guidance_schedule: `"constant"`, or `"linear"` (the weight ramps from 1 to `guidance_scale` as tokens
                are revealed). Default: the pipeline's `default_guidance_schedule`, else `"constant"`.
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
        class_ids = self._start_call(
            batch_size, num_inference_steps, guidance_scale, guidance_schedule, choice_temperature, output_type,
            generator, callback_on_step_end_tensor_inputs, class_labels,
        )
        if class_ids is None and guidance_scale not in (None, 1.0):  # the caller's argument, not the default
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



def register_with_diffusers(*pipeline_classes: type) -> None:
    """Make `diffusers.DiffusionPipeline.from_pretrained(folder)` resolve `model_index.json`'s `_class_name`
    (e.g. `"MagePipeline"`) to these classes: diffusers looks pipeline classes up as attributes of its own module.
    Called when the pipeline modules are imported."""
    import diffusers

    for pipeline_class in pipeline_classes:
        if getattr(diffusers, pipeline_class.__name__, None) is None:
            setattr(diffusers, pipeline_class.__name__, pipeline_class)


register_with_diffusers(MagePipeline)
