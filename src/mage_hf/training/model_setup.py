"""Building the MAGE model for pre-training: its config from a preset / JSON / folder, checked against the
VQ tokenizer it will read, class-conditional vocabulary checks, and copying the tokenizer weights in."""

from __future__ import annotations

import inspect
import os

import torch
from transformers import PreTrainedConfig
from transformers.utils import logging

from ..configuration_mage import MAGE_PRESETS, MageConfig
from ..modeling_mage import MageForMaskedImageModeling
from ..modeling_vqvae import MageVQModel
from ..vq_layers import DEFAULT_VQ_CONFIG
from .arguments import parse_json_or_path, pipeline_subfolder

logger = logging.get_logger(__name__)

# Settings that change the VQ encoder/codebook; `sample_size` (the training resolution) is informational.
STRUCTURAL_VQ_KEYS = tuple(key for key in DEFAULT_VQ_CONFIG if key != "sample_size")


def load_vqvae(path: str, argument: str = "vqvae") -> MageVQModel:
    """A `MageVQModel` folder, or a pipeline folder (its `vqvae/` subfolder)."""
    if not os.path.isdir(path):
        raise ValueError(f"`{argument}` {path!r} is not a folder (expected a MageVQModel or pipeline folder)")
    subfolder = pipeline_subfolder(path, "vqvae")
    if not os.path.isfile(os.path.join(path, subfolder, "config.json")):
        raise ValueError(f"`{argument}` {path!r} has no config.json (expected a MageVQModel folder from train_tokenizer.py)")
    return MageVQModel.from_pretrained(path, subfolder=subfolder or None)


def vq_settings(vqvae: MageVQModel) -> dict:
    """The `MageConfig.vqvae_config` describing `vqvae`."""
    return {key: _normalise(vqvae.config[key]) for key in DEFAULT_VQ_CONFIG}


def check_vqvae_matches(vqvae_config: dict, vqvae: MageVQModel, argument: str = "vqvae") -> None:
    """Fail with the contradicting keys when a model's `vqvae_config` does not describe `vqvae`."""
    actual = vq_settings(vqvae)
    wrong = {key: (vqvae_config.get(key), actual[key]) for key in STRUCTURAL_VQ_KEYS
             if key in vqvae_config and _normalise(vqvae_config[key]) != _normalise(actual[key])}
    if wrong:
        details = ", ".join(f"{key}: model {model!r} vs tokenizer {tok!r}" for key, (model, tok) in wrong.items())
        raise ValueError(f"`{argument}` does not match the model config's `vqvae_config` ({details})")


def _normalise(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _known_config_keys() -> set[str]:
    return (set(inspect.signature(MageConfig.__init__).parameters) - {"self", "kwargs"}) | set(PreTrainedConfig().to_dict())


def config_kwargs_from(model_config: str | None) -> dict:
    """`--model_config`: a preset name from `MAGE_PRESETS`, a JSON object or a .json path (MageConfig kwargs)."""
    if model_config in MAGE_PRESETS:
        return dict(MAGE_PRESETS[model_config])
    if model_config is not None and not model_config.lstrip().startswith("{") and not os.path.isfile(model_config):
        raise ValueError(
            f"`model_config` {model_config!r} is neither a preset ({sorted(MAGE_PRESETS)}), a JSON object nor a .json file"
        )
    kwargs = parse_json_or_path(model_config, "model_config")
    unknown = sorted(set(kwargs) - _known_config_keys())
    if unknown:
        raise ValueError(f"`model_config` has unknown keys {unknown}; expected MageConfig arguments")
    return kwargs


def build_pretraining_config(model_config: str | None, model_name_or_path: str | None, vqvae: MageVQModel,
                             image_size: int | None) -> MageConfig:
    """A fresh config (from `model_config`, with the tokenizer's settings) or the one in `model_name_or_path`;
    either way checked against `vqvae` and `image_size`."""
    if (model_config is None) == (model_name_or_path is None):
        raise ValueError("Pass exactly one of `model_config` (fresh weights) and `model_name_or_path` (start from weights)")
    if model_name_or_path is not None:
        subfolder = pipeline_subfolder(model_name_or_path, "transformer")
        config = MageConfig.from_pretrained(model_name_or_path, subfolder=subfolder)
        check_vqvae_matches(config.vqvae_config, vqvae)
    else:
        kwargs = config_kwargs_from(model_config)
        if "vqvae_config" in kwargs:
            check_vqvae_matches(kwargs["vqvae_config"], vqvae)
        kwargs["vqvae_config"] = vq_settings(vqvae)
        if image_size is not None and kwargs.setdefault("image_size", image_size) != image_size:
            raise ValueError(f"`model_config` image_size {kwargs['image_size']} contradicts `image_size` {image_size}")
        kwargs.setdefault("image_size", vqvae.config.sample_size)
        check_image_size(kwargs["image_size"], vqvae)
        config = MageConfig(**kwargs)
    if image_size is not None and config.image_size != image_size:
        raise ValueError(f"`image_size` {image_size} differs from the model's image_size {config.image_size}")
    return config


def check_image_size(image_size: int, vqvae: MageVQModel) -> None:
    factor = vqvae.downsample_factor
    if image_size % factor:
        raise ValueError(
            f"`image_size` ({image_size}) must be a multiple of the tokenizer's downsampling factor ({factor}, "
            f"from channel_multipliers {list(vqvae.config.channel_multipliers)})"
        )


def set_class_conditioning(config: MageConfig, class_names: list[str] | None, dropout_prob: float | None) -> None:
    """Make `config` class-conditional over `class_names`: `id2label`/`label2id`, and checks that the vocabulary
    has a class token per class plus a distinct fake class."""
    if not class_names:
        raise ValueError(
            "`class_conditional` needs labelled training data (a label column, `y_train`, or class sub-folders)"
        )
    num_classes = len(class_names)
    fake_id = config.fake_class_label - config.codebook_size
    if config.num_class_tokens < num_classes + 1 or fake_id < num_classes:
        raise ValueError(
            f"`class_conditional` with {num_classes} classes needs `num_class_tokens` >= {num_classes + 1} and a fake "
            f"class outside the real ones (`fake_class_label` >= codebook_size + {num_classes} = "
            f"{config.codebook_size + num_classes}); the model config has num_class_tokens={config.num_class_tokens}, "
            f"fake_class_label={config.fake_class_label}. Set them in `model_config`, e.g. "
            f'{{"num_class_tokens": {num_classes + 1}, "fake_class_label": {config.codebook_size + num_classes}}}'
        )
    config.class_conditional = True
    if dropout_prob is not None:
        if not 0 <= dropout_prob <= 1:
            raise ValueError(f"`class_dropout_prob` must be in [0, 1], got {dropout_prob}")
        config.class_dropout_prob = dropout_prob
    config.id2label = {i: str(name) for i, name in enumerate(class_names)}
    config.label2id = {str(name): i for i, name in enumerate(class_names)}


@torch.no_grad()
def copy_vqvae_weights(model: MageForMaskedImageModeling, vqvae: MageVQModel, warn_if_different: bool = False) -> None:
    """Put the tokenizer's encoder and codebook into the transformer's built-in (frozen) VQ tokenizer."""
    target = model.mage.vqvae
    old_codebook, new_codebook = target.quantize.embedding.weight, vqvae.quantize.embedding.weight
    if warn_if_different and not torch.equal(old_codebook.cpu(), new_codebook.to(old_codebook.dtype).cpu()):
        logger.warning("the model's built-in tokenizer differs from `--vqvae`; replacing it (token ids change meaning)")
    target.encoder.load_state_dict(vqvae.encoder.state_dict())
    target.quantize.load_state_dict(vqvae.quantize.state_dict())
    target.requires_grad_(False)
