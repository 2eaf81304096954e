"""Conversion of the original MAGE checkpoints (github.com/LTH14/mage) into mage-hf folders.

Every key of an original checkpoint is either mapped or listed in `DROPPED_PREFIXES` (modules the original
builds but never uses in its forward pass); anything else is unknown and fails the conversion unless the
caller asks to ignore it. Missing keys and shapes that contradict the config fail too, naming the keys.

- a pre-training checkpoint (`models_mage`) becomes a `MagePipeline` folder: `model_index.json`, `transformer/`
  (with a `MageImageProcessor`, so the folder alone is an embedding model), `vqvae/`, `scheduler/`;
- a fine-tuned checkpoint (`models_vit_mage`) becomes a `MageForImageClassification` folder.

`conversion/convert_original_mage.py` and `mage-hf convert` share `add_convert_arguments` and
`convert_from_args`; `convert_checkpoint` is the library entry point.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import HfApi

from .configuration_mage import MAGE_PRESETS, MageConfig

logger = logging.getLogger(__name__)

TASKS = ("pretraining", "image-classification")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# The original README generates with `gen_img_uncond.py --temp 6.0 --num_iter 20` (ViT-B, the only setting it
# gives); its script defaults (4.5, 12 steps) are not what the reported FID used.
DEFAULT_CHOICE_TEMPERATURE = 6.0
RECOMMENDED_INFERENCE_STEPS = 20

# Built by the original but unused by any forward pass: the MAE-style patch embedding and its position
# embeddings, the MAE decoder's mask token / sin-cos positions / pixel head, and a constant buffer.
# torchvision/timm ImageNet statistics, used by the original fine-tuning and its evaluation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resize(292) then CenterCrop(256) in the original linear-probe and fine-tuning evaluations.
ORIGINAL_EVAL_RESIZE_RATIO = 292 / 256

DROPPED_PREFIXES = (
    "patch_embed.",
    "cls_token",
    "pos_embed",
    "mask_token",
    "decoder_pos_embed",  # the fixed sin-cos one; `decoder_pos_embed_learned` is mapped before this check
    "decoder_pred.",
    "token_emb.position_ids",
)

_TRANSFORMER_RULES: list[tuple[str, str]] = [
    (r"^token_emb\.word_embeddings\.", "mage.embeddings.word_embeddings."),
    (r"^token_emb\.position_embeddings\.", "mage.embeddings.position_embeddings."),
    (r"^token_emb\.LayerNorm\.", "mage.embeddings.layer_norm."),
    (r"^blocks\.(\d+)\.", r"mage.encoder.layers.\1."),
    (r"^norm\.", "mage.norm."),
    (r"^fc_norm\.", "mage.fc_norm."),
    (r"^decoder_embed\.", "decoder.embed."),
    (r"^decoder_pos_embed_learned$", "decoder.position_embeddings"),
    (r"^decoder_blocks\.(\d+)\.", r"decoder.blocks.layers.\1."),
    (r"^decoder_norm\.", "decoder.norm."),
    (r"^mlm_layer\.fc\.", "mlm_head.fc."),
    (r"^mlm_layer\.ln\.", "mlm_head.layer_norm."),
    (r"^mlm_layer\.bias$", "mlm_head.bias"),
    (r"^head\.", "classifier."),
    (r"^vqgan\.encoder\.", "mage.vqvae.encoder."),
    (r"^vqgan\.quantize\.embedding\.", "mage.vqvae.quantize.embedding."),
]


class ConversionError(ValueError):
    """A checkpoint that does not fit the requested model (unknown, missing or mis-shaped keys)."""


# --------------------------------------------------------------------------- reading and renaming


def load_original_state_dict(path: str | os.PathLike, argument: str = "--checkpoint") -> dict[str, torch.Tensor]:
    """Open an original `.pth`/`.ckpt` safely (`weights_only=True`) and return its flat state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{argument}`: checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have no common base class
        raise ConversionError(f"`{argument}`: {path} cannot be read as a weights-only PyTorch checkpoint: {error}") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConversionError(
            f"`{argument}`: {path} does not hold a state dict (expected {{'model': ...}} or {{'state_dict': ...}})"
        )
    return checkpoint


@dataclass
class ConvertedWeights:
    """State dicts for the mage-hf modules, plus what was dropped and what was not understood.

    `sources` maps each new key (of either state dict) to the original key it came from, for error messages.
    """

    transformer: dict[str, torch.Tensor] = field(default_factory=dict)
    vqvae: dict[str, torch.Tensor] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


def map_original_keys(state_dict: dict[str, torch.Tensor]) -> ConvertedWeights:
    """Rename the original keys. `vqgan.*` (or a bare VQGAN's `encoder.*`/`decoder.*`/`quantize.*`) also goes to
    the `MageVQModel` state dict."""
    out = ConvertedWeights()
    bare_vqgan = any(k.startswith("quantize.") for k in state_dict) and not any(k.startswith("vqgan.") for k in state_dict)
    for key, tensor in state_dict.items():
        vq_key = key if bare_vqgan else (key[len("vqgan."):] if key.startswith("vqgan.") else None)
        if vq_key is not None:
            if re.match(r"^(encoder|decoder)\.|^quantize\.embedding\.weight$", vq_key):
                out.vqvae[vq_key] = tensor
                out.sources["vqvae:" + vq_key] = key
                if not vq_key.startswith("decoder."):
                    out.transformer["mage.vqvae." + vq_key] = tensor
                    out.sources["mage.vqvae." + vq_key] = key
            else:
                out.unknown.append(key)
            continue
        for pattern, replacement in _TRANSFORMER_RULES:
            if re.match(pattern, key):
                new_key = re.sub(pattern, replacement, key)
                if new_key == "mlm_head.bias":
                    tensor = tensor.reshape(-1)
                out.transformer[new_key] = tensor
                out.sources[new_key] = key
                break
        else:
            if key.startswith(DROPPED_PREFIXES):
                out.dropped.append(key)
            else:
                out.unknown.append(key)
    return out


# --------------------------------------------------------------------------- configs


def config_from_original(original: dict, task: str = "pretraining") -> MageConfig:
    """A `MageConfig` from the original code's own hyper-parameter names (see the fixture's `config.json`).

    Keys: `embed_dim`, `depth`, `num_heads`, `decoder_embed_dim`, `decoder_depth`, `decoder_num_heads`,
    `mlp_ratio` (default 4), VQGAN `ch`, `ch_mult`, `num_res_blocks`, `z_channels`, `resolution`, `n_embed`,
    optional `img_size` (or `original_model_kwargs.img_size`) and `num_classes`.
    """
    required = ["embed_dim", "depth", "num_heads", "ch", "ch_mult", "num_res_blocks", "z_channels", "n_embed"]
    missing = [k for k in required if k not in original]
    if missing:
        raise ValueError(f"original config is missing {missing}")
    mlp_ratio = original.get("mlp_ratio", 4)
    image_size = original.get("img_size", original.get("original_model_kwargs", {}).get("img_size", original.get("resolution", 256)))
    vqvae_config = dict(
        base_channels=original["ch"], channel_multipliers=list(original["ch_mult"]),
        num_res_blocks=original["num_res_blocks"], latent_channels=original["z_channels"],
        codebook_size=original["n_embed"], sample_size=original.get("resolution", image_size),
    )
    kwargs = dict(
        hidden_size=original["embed_dim"], num_hidden_layers=original["depth"], num_attention_heads=original["num_heads"],
        intermediate_size=int(original["embed_dim"] * mlp_ratio), image_size=image_size, vqvae_config=vqvae_config,
    )
    if "decoder_embed_dim" in original:
        kwargs.update(
            decoder_hidden_size=original["decoder_embed_dim"], decoder_num_hidden_layers=original["decoder_depth"],
            decoder_num_attention_heads=original["decoder_num_heads"],
            decoder_intermediate_size=int(original["decoder_embed_dim"] * mlp_ratio),
        )
    if task == "image-classification":
        kwargs.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        if "num_classes" in original:
            kwargs["num_labels"] = original["num_classes"]
    config = MageConfig(**kwargs)
    _check_derived_facts(original, config)
    return config


def _check_derived_facts(original: dict, config: MageConfig) -> None:
    """The original config may state derived ids (`vocab_size`, ...): they must agree with the built config."""
    facts = {"codebook_size": config.codebook_size, "vocab_size": config.vocab_size,
             "fake_class_label": config.fake_class_label, "mask_token_label": config.mask_token_id,
             "seq_len": config.num_tokens}
    wrong = {k: (original[k], v) for k, v in facts.items() if k in original and original[k] != v}
    if wrong:
        details = ", ".join(f"{k}: {given} in the file vs {built} from its sizes" for k, (given, built) in wrong.items())
        raise ValueError(f"`--original-config` contradicts itself: {details}")


def config_from_preset(name: str, task: str = "pretraining") -> MageConfig:
    """The config of an original model factory (`--model`)."""
    if name not in MAGE_PRESETS:
        raise ValueError(f"`--model` must be one of {sorted(MAGE_PRESETS)}, got {name!r}")
    return MageConfig.from_preset(name)


def read_original_config(path: str | os.PathLike) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`--original-config`: file not found: {path}")
    with open(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"`--original-config`: {path} is not valid JSON: {error}") from error


def infer_task(state_dict: dict[str, torch.Tensor]) -> str:
    """`"image-classification"` for a fine-tuned checkpoint (it has a `head`), else `"pretraining"`."""
    return "image-classification" if "head.weight" in state_dict else "pretraining"


def classifier_pooling_from_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """The original `global_pool=True` keeps `fc_norm` and deletes `norm`; `global_pool=False` the reverse."""
    if "fc_norm.weight" in state_dict:
        return "mean"
    if "norm.weight" in state_dict:
        return "cls"
    raise ConversionError("the classifier checkpoint has neither `fc_norm.*` (global pooling) nor `norm.*` (class token)")


def parse_id2label(value: str | dict | list | None, num_labels: int) -> dict[int, str] | None:
    """`--id2label`: a JSON file or JSON text, either a list of names or a {id: name} dict covering 0..num_labels-1."""
    if value is None:
        return None
    if isinstance(value, str):
        text = Path(value).read_text() if os.path.isfile(value) else value
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`--id2label` must be a JSON file or JSON text (list or dict), got {value!r}") from error
    if isinstance(value, list):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise TypeError(f"`--id2label` must be a list of names or a dict {{id: name}}, got {type(value).__name__}")
    try:
        id2label = {int(k): str(v) for k, v in value.items()}
    except ValueError as error:
        raise ValueError(f"`--id2label` keys must be integer class ids, got {sorted(value)}") from error
    if sorted(id2label) != list(range(num_labels)):
        raise ValueError(
            f"`--id2label` must name the {num_labels} classes 0..{num_labels - 1} of the checkpoint's head, "
            f"got {len(id2label)} entries"
        )
    return id2label


def build_config(task: str, state_dict: dict[str, torch.Tensor], model: str | None = None,
                 original_config: str | os.PathLike | None = None, id2label=None) -> MageConfig:
    """The `MageConfig` for `task`, from a preset name or an original config file, completed from the checkpoint
    (classifier pooling, number of classes)."""
    if (model is None) == (original_config is None):
        raise ValueError("pass exactly one of `--model` (a preset name) and `--original-config` (a JSON file)")
    original = read_original_config(original_config) if original_config is not None else {}
    config = config_from_preset(model, task) if model is not None else config_from_original(original, task)
    if task == "image-classification":
        if "head.weight" not in state_dict:
            raise ConversionError("`--task image-classification` needs a fine-tuned checkpoint with `head.weight`; none found")
        config.classifier_pooling = classifier_pooling_from_state_dict(state_dict)
        # The original fine-tuning/evaluation normalised pixels with ImageNet mean/std before the VQGAN.
        config.image_mean, config.image_std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        # A stated class count must agree with the head (checked when loading); otherwise the head decides.
        num_labels = original.get("num_classes", state_dict["head.weight"].shape[0])
        labels = parse_id2label(id2label, num_labels) or {i: f"LABEL_{i}" for i in range(num_labels)}
        config.id2label = labels
        config.label2id = {name: i for i, name in labels.items()}
    elif id2label is not None:
        raise ValueError("`--id2label` only applies to `--task image-classification`")
    return config


# --------------------------------------------------------------------------- loading into mage-hf modules


def load_converted(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], allow_missing: tuple[str, ...] = (),
                   sources: dict[str, str] | None = None, source_prefix: str = "") -> None:
    """Load `state_dict` into `model` strictly, with errors that name the offending keys and shapes.

    `allow_missing` lists key prefixes the original checkpoint legitimately lacks (left at their init).
    `sources` maps a key (prefixed by `source_prefix`) to its original name, used in the messages.
    """
    sources = sources or {}

    def name(key: str) -> str:
        original = sources.get(source_prefix + key)
        return f"{original} (-> {key})" if original and original != key else key

    expected = model.state_dict()
    mismatched = [
        f"{name(k)}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
        for k, v in state_dict.items() if k in expected and expected[k].shape != v.shape
    ]
    if mismatched:
        raise ConversionError("the config's sizes contradict the checkpoint:\n  " + "\n  ".join(mismatched))
    unexpected = sorted(name(k) for k in set(state_dict) - set(expected))
    missing = sorted(k for k in set(expected) - set(state_dict) if not k.startswith(allow_missing))
    if unexpected or missing:
        raise ConversionError(
            f"checkpoint does not match the {type(model).__name__} of this config:"
            + (f"\n  missing keys: {missing}" if missing else "")
            + (f"\n  keys the model does not have: {unexpected}" if unexpected else "")
        )
    model.load_state_dict(state_dict, strict=False)


# Every original MAGE model (pre-training and fine-tuned) has these; a checkpoint without them is something else.
MAGE_KEY_PREFIXES = ("token_emb.", "blocks.")


def check_is_mage_checkpoint(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse, naming the file and a few of its keys, a state dict that is not an original MAGE model."""
    if all(any(key.startswith(prefix) for key in state_dict) for prefix in MAGE_KEY_PREFIXES):
        return
    sample = ", ".join(sorted(state_dict)[:5]) or "none"
    if any(key.startswith("quantize.") for key in state_dict):
        raise ConversionError(
            f"`--checkpoint` {path} is a VQGAN checkpoint, not a MAGE one: pass it with `--vqgan` and the MAGE "
            f"checkpoint with `--checkpoint`"
        )
    raise ConversionError(
        f"`--checkpoint` {path} is not a MAGE checkpoint: no keys like `blocks.*` / `token_emb.*` "
        f"({len(state_dict)} key(s), e.g. {sample})"
    )


def collect_weights(checkpoint: str | os.PathLike, vqgan: str | os.PathLike | None,
                    ignore_unknown_keys: bool = False) -> tuple[dict[str, torch.Tensor], ConvertedWeights]:
    """Read the main checkpoint (and a separate VQGAN one), rename everything, and police unknown keys.

    Returns the original state dict (for config inference) and the renamed weights.
    """
    state_dict = load_original_state_dict(checkpoint)
    check_is_mage_checkpoint(state_dict, checkpoint)
    weights = map_original_keys(state_dict)
    if vqgan is not None:
        vq_weights = map_original_keys(load_original_state_dict(vqgan, "--vqgan"))
        stray = sorted(k for k in vq_weights.transformer if not k.startswith("mage.vqvae."))
        if stray or not vq_weights.vqvae:
            raise ConversionError(f"`--vqgan` {vqgan} is not a VQGAN checkpoint (encoder./decoder./quantize. keys); found {stray[:5]}")
        if weights.vqvae:
            logger.warning("the checkpoint has its own `vqgan.*` weights; using those of `--vqgan` %s instead", vqgan)
        weights.transformer = {k: v for k, v in weights.transformer.items() if not k.startswith("mage.vqvae.")}
        weights.transformer.update(vq_weights.transformer)
        weights.vqvae = vq_weights.vqvae
        weights.sources.update({k: f"{os.path.basename(vqgan)}:{v}" for k, v in vq_weights.sources.items()})
        weights.unknown += [f"{os.path.basename(vqgan)}:{k}" for k in vq_weights.unknown]
    elif not weights.vqvae:
        raise ConversionError(
            "the checkpoint has no `vqgan.*` keys (the tokenizer); pass the VQGAN checkpoint with `--vqgan PATH`"
        )
    if weights.unknown:
        listing = "\n  ".join(weights.unknown)
        if not ignore_unknown_keys:
            raise ConversionError(
                f"{len(weights.unknown)} key(s) of the checkpoint are not understood (pass --ignore-unknown-keys "
                f"to drop them):\n  {listing}"
            )
        logger.warning("ignoring %d unknown key(s):\n  %s", len(weights.unknown), listing)
    logger.info("dropped %d key(s) of modules the original never uses: %s", len(weights.dropped), weights.dropped)
    return state_dict, weights


def _auto_map(task: str) -> dict[str, str]:
    """`auto_map` for `trust_remote_code=True` loading where mage-hf is not installed (code files are copied)."""
    head = ("AutoModelForMaskedImageModeling", "modeling_mage.MageForMaskedImageModeling") if task == "pretraining" else (
        "AutoModelForImageClassification", "modeling_mage.MageForImageClassification")
    return {"AutoConfig": "configuration_mage.MageConfig", "AutoModel": "modeling_mage.MageModel", head[0]: head[1]}


def build_pipeline(config: MageConfig, weights: ConvertedWeights, choice_temperature: float = DEFAULT_CHOICE_TEMPERATURE):
    """A `MagePipeline` holding the converted pre-training weights."""
    from .modeling_mage import MageForMaskedImageModeling
    from .modeling_vqvae import MageVQModel
    from .pipeline_mage import MagePipeline
    from .scheduling_mage import MageScheduler

    transformer = MageForMaskedImageModeling(config)
    # The pre-training checkpoint has no `fc_norm`: its init (unit weight, zero bias) is the original linear-probe
    # LayerNorm, whose affine parameters the probe never trained.
    load_converted(transformer, weights.transformer, allow_missing=("mage.fc_norm.",), sources=weights.sources)
    vqvae = MageVQModel(**config.vqvae_config)
    load_converted(vqvae, weights.vqvae, sources=weights.sources, source_prefix="vqvae:")
    scheduler = MageScheduler(mask_token_id=config.mask_token_id, choice_temperature=choice_temperature)
    return MagePipeline(vqvae=vqvae.eval(), transformer=transformer.eval(), scheduler=scheduler)


def build_classifier(config: MageConfig, weights: ConvertedWeights):
    """A `MageForImageClassification` holding the converted fine-tuned weights (the VQGAN decoder is dropped)."""
    from .modeling_mage import MageForImageClassification

    model = MageForImageClassification(config)
    # `global_pool=True` checkpoints have no `norm`, class-token ones no `fc_norm`: the unused one keeps its init.
    unused_norm = "mage.norm." if config.classifier_pooling == "mean" else "mage.fc_norm."
    load_converted(model, weights.transformer, allow_missing=(unused_norm,), sources=weights.sources)
    logger.info("dropped %d `vqgan.decoder.*` key(s): a classifier has no image decoder",
                sum(k.startswith("decoder.") for k in weights.vqvae))
    return model.eval()


# --------------------------------------------------------------------------- writing


def check_output_dir(output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a file, or a non-empty folder unless `overwrite`."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"`--output` {output} is a file, expected a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"`--output` {output} is not empty; pass --overwrite to replace the converted files in it")
    return output


def _relative_files(root: Path) -> list[str]:
    """Every file (or symlink) under `root`, as sorted POSIX paths relative to it."""
    found = []
    for folder, dirs, files in os.walk(root):
        found += [Path(folder, name).relative_to(root).as_posix() for name in files]
        found += [Path(folder, name).relative_to(root).as_posix() for name in dirs if Path(folder, name).is_symlink()]
    return sorted(found)


def _check_no_conflicts(staging: Path, output: Path) -> None:
    """Refuse, before anything is changed, an output where a file sits at a folder the conversion writes (or a
    folder at one of its files): replacing either would delete data the conversion does not own."""
    for relative in _relative_files(staging):
        target = output / relative
        for parent in list(reversed(target.relative_to(output).parents))[1:]:
            blocker = output / parent
            if (blocker.exists() or blocker.is_symlink()) and not blocker.is_dir():
                raise FileExistsError(
                    f"`--output`: {blocker} is a file where the conversion writes a folder; move it away"
                )
        if target.is_dir() and not target.is_symlink():
            raise FileExistsError(f"`--output`: {target} is a folder where the conversion writes a file; move it away")


def _link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link `source` to `destination` (same data, no copy), or copy it where links are not possible."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        os.symlink(os.readlink(source), destination)
        return
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _carry_over(old_folder: Path, new_folder: Path) -> list[str]:
    """Put into `new_folder` every file of `old_folder` that it does not have; returns them (relative paths).

    Hard links, so the originals stay where they are until the folders are swapped: an error or a kill before the
    swap loses nothing."""
    kept = []
    for relative in _relative_files(old_folder):
        if not (new_folder / relative).exists() and not (new_folder / relative).is_symlink():
            _link_or_copy(old_folder / relative, new_folder / relative)
            kept.append(relative)
    for folder, dirs, _ in os.walk(old_folder):  # empty folders of the user's, too
        for name in dirs:
            (new_folder / Path(folder, name).relative_to(old_folder)).mkdir(parents=True, exist_ok=True)
    return kept


def _install(staging: Path, output: Path) -> tuple[list[str], list[str]]:
    """Move the converted files from `staging` into `output`, replacing only the files the conversion writes.

    Top-level files are replaced with `os.replace` (atomic). Each top-level folder (`transformer/`, `vqvae/`, ...)
    is swapped whole, by two renames, after the old folder's other files have been linked into the new one: a
    killed conversion leaves each folder either as it was or complete, never half-written, and every file the
    conversion does not write is kept. Returns (replaced, kept) paths relative to `output`.
    """
    output.mkdir(parents=True, exist_ok=True)
    _check_no_conflicts(staging, output)
    written = _relative_files(staging)
    replaced = [path for path in written if (output / path).exists() or (output / path).is_symlink()]
    kept: list[str] = []
    # Old folders are parked beside `output` (not in `staging`, which is removed even after an error) until the
    # new ones are in place; a folder that could not be put back stays there, and the error says where.
    trash = Path(tempfile.mkdtemp(prefix=f".{output.name}-replaced-", dir=output.parent))
    stranded = False
    try:
        for entry in sorted(staging.iterdir()):
            target = output / entry.name
            if not (entry.is_dir() and target.is_dir()):
                os.replace(entry, target)
                continue
            kept += [f"{entry.name}/{path}" for path in _carry_over(target, entry)]
            parked = trash / entry.name  # a symlinked folder: only the link is moved
            os.rename(target, parked)
            try:
                os.rename(entry, target)
            except BaseException:
                try:
                    os.rename(parked, target)
                except BaseException:
                    stranded = True
                    logger.error("could not put the previous %s back; it is at %s", target, parked)
                raise
    finally:
        if not stranded:
            shutil.rmtree(trash, ignore_errors=True)
    written_top = {path.split("/")[0] for path in written}
    kept += [path.name + ("/" if path.is_dir() else "") for path in output.iterdir() if path.name not in written_top]
    if replaced:
        logger.warning("--overwrite: replaced %d file(s) of %s with the converted ones: %s", len(replaced), output,
                       ", ".join(replaced))
    if kept:
        logger.warning("kept %d file(s) in %s that this conversion does not write: %s", len(kept), output,
                       ", ".join(sorted(kept)))
    return replaced, sorted(kept)


def push_converted_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None,
                          private: bool | None = None, commit_message: str | None = None) -> str:
    """Create `repo_id` (if needed) and upload `folder` to it; returns the repository URL."""
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                      commit_message=commit_message or "Upload MAGE checkpoint converted from the original")
    logger.info("uploaded %s to %s", folder, url)
    return str(url)


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str | None = None,
    original_config: str | os.PathLike | None = None,
    vqgan: str | os.PathLike | None = None,
    task: str | None = None,
    ignore_unknown_keys: bool = False,
    overwrite: bool = False,
    dtype: str | None = None,
    id2label=None,
    choice_temperature: float = DEFAULT_CHOICE_TEMPERATURE,
    push_to_hub: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    command: str | None = None,
) -> Path:
    """Convert an original MAGE checkpoint into a mage-hf folder (and optionally push it to the Hub).

    Args:
        checkpoint: the original `.pth` (`{"model": state_dict}`).
        output: the folder to write; must be empty or absent unless `overwrite`, which replaces only the files the
            conversion writes (logged) and keeps every other file, also inside `transformer/` and `vqvae/`.
        model / original_config: a preset name (`MAGE_PRESETS`) or the original hyper-parameters as JSON.
        vqgan: a separate VQGAN checkpoint, needed when `checkpoint` has no `vqgan.*` keys.
        task: `"pretraining"` or `"image-classification"`; inferred from the checkpoint (a `head`) when None.
        ignore_unknown_keys: drop (with a warning) keys that are neither mapped nor known to be unused.
        dtype: `"float32"` (default), `"float16"` or `"bfloat16"` for the written transformer/classifier weights
            (a pipeline's VQGAN stays float32).
        id2label: class names for a classifier (list, dict, JSON text or JSON file); `LABEL_i` by default.
        choice_temperature: the scheduler's Gumbel noise scale (pre-training only).
        push_to_hub: a repository id to upload the folder to; `token`/`private` are passed to the Hub.
        command: the command line recorded in the model card.

    Returns:
        The output folder.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"`--task` must be one of {TASKS}, got {task!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"`--dtype` must be one of {sorted(DTYPES)}, got {dtype!r}")
    if (model is None) == (original_config is None):
        raise ValueError("pass exactly one of `--model` (a preset name) and `--original-config` (a JSON file)")
    output = check_output_dir(output, overwrite)
    state_dict, weights = collect_weights(checkpoint, vqgan, ignore_unknown_keys)
    task = task or infer_task(state_dict)
    logger.info("converting %s as a %s checkpoint", checkpoint, task)
    config = build_config(task, state_dict, model, original_config, id2label)
    if command is None:
        command = _default_command(checkpoint, output, model, original_config, vqgan, task)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-converting-", dir=output.parent))
    try:
        _write_folder(staging, task, config, weights, dtype, choice_temperature)
        card = _model_card(task, model, command, push_to_hub or str(output), choice_temperature,
                           os.path.basename(checkpoint), config, dtype)
        (staging / "README.md").write_text(card)
        _install(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote %s", output)
    if push_to_hub:
        push_converted_folder(output, push_to_hub, token=token, private=private)
    return output


def _write_folder(folder: Path, task: str, config: MageConfig, weights: ConvertedWeights, dtype: str | None,
                  choice_temperature: float) -> None:
    from .image_processing_mage import MageImageProcessor

    config.auto_map = _auto_map(task)
    # The original evaluations resize the shorter side to 292 px before a 256 px centre crop.
    eval_resize = round(config.image_size * ORIGINAL_EVAL_RESIZE_RATIO)
    processor = MageImageProcessor.from_mage_config(config, size={"shortest_edge": eval_resize})
    if task == "pretraining":
        pipeline = build_pipeline(config, weights, choice_temperature)
        if dtype:
            # The VQGAN decoder stays float32: it is small, and `MagePipeline` loads it in float32 anyway.
            pipeline.transformer.to(DTYPES[dtype])
        pipeline.save_pretrained(folder)
        processor.save_pretrained(folder / "transformer")
        # transformers looks for remote code at the repository root even when loading `subfolder="transformer"`:
        # a copy there makes `AutoModel.from_pretrained(repo, subfolder="transformer", trust_remote_code=True)` work.
        for code_file in sorted((folder / "transformer").glob("*.py")):
            shutil.copyfile(code_file, folder / code_file.name)
    else:
        classifier = build_classifier(config, weights)
        if dtype:
            classifier.to(DTYPES[dtype])
        classifier.save_pretrained(folder)
        processor.save_pretrained(folder)


def _model_card(task, model, command, location, choice_temperature, checkpoint_name, config, dtype) -> str:
    from .model_card import make_model_card

    notes = []
    if task == "pretraining":
        notes.append(
            f"Scheduler: `choice_temperature={choice_temperature}`, the original README's generation setting, which "
            f"uses {RECOMMENDED_INFERENCE_STEPS} steps: call the pipeline with "
            f"`num_inference_steps={RECOMMENDED_INFERENCE_STEPS}`."
        )
    else:
        pooling = "global average pooling + `fc_norm`" if config.classifier_pooling == "mean" else "class token + `norm`"
        notes.append(f"Pooling: {pooling}; {config.num_labels} classes.")
        notes.append(
            "The original fine-tuning code normalised pixels with the ImageNet mean/std before its VQGAN tokenizer; "
            "this model, like the pre-trained MAGE, takes [0, 1] pixels, so its accuracy may differ from the "
            "reported one."
        )
    if dtype and dtype != "float32":
        stored = "transformer weights" if task == "pretraining" else "weights"
        notes.append(f"The {stored} are stored in {dtype} (the original checkpoint is float32).")
    return make_model_card(task, model, command, location, choice_temperature, checkpoint_name, notes)


def _default_command(checkpoint, output, model, original_config, vqgan, task) -> str:
    parts = ["python", "conversion/convert_original_mage.py", "--checkpoint", str(checkpoint)]
    parts += ["--vqgan", str(vqgan)] if vqgan else []
    parts += ["--model", model] if model else ["--original-config", str(original_config)]
    parts += ["--task", task, "--output", str(output)]
    return shlex.join(parts)


# --------------------------------------------------------------------------- command line


def add_convert_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the conversion options (shared by `conversion/convert_original_mage.py` and `mage-hf convert`)."""
    parser.add_argument("--checkpoint", required=True, help="original checkpoint (.pth, {'model': state_dict})")
    parser.add_argument("--vqgan", default=None, help="separate VQGAN checkpoint ({'state_dict': ...}), used when "
                        "the main checkpoint has no vqgan.* keys")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=sorted(MAGE_PRESETS), help="the original model factory")
    source.add_argument("--original-config", default=None, help="JSON with the original code's hyper-parameter names")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="what the checkpoint is (default: image-classification if it has a head, else pretraining)")
    parser.add_argument("--output", required=True, help="folder to write (must be empty unless --overwrite)")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload the folder to this Hub repository")
    parser.add_argument("--private", action="store_true", default=None, help="create the Hub repository as private")
    parser.add_argument("--ignore-unknown-keys", action="store_true", help="drop unknown keys with a warning")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --output: only the files this conversion writes are replaced "
                             "(and listed); every other file there, also inside transformer/ and vqvae/, is kept")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="dtype of the written transformer weights (default float32; the VQGAN stays float32)")
    parser.add_argument("--id2label", default=None, help="class names: JSON file or JSON text (list or {id: name})")
    parser.add_argument("--choice-temperature", type=float, default=DEFAULT_CHOICE_TEMPERATURE,
                        help="scheduler choice temperature (the original README's 6.0)")
    return parser


def convert_from_args(args: argparse.Namespace, command: str | None = None) -> Path:
    """Run `convert_checkpoint` on options parsed with `add_convert_arguments`."""
    return convert_checkpoint(
        args.checkpoint, args.output, model=args.model, original_config=args.original_config, vqgan=args.vqgan,
        task=args.task, ignore_unknown_keys=args.ignore_unknown_keys, overwrite=args.overwrite, dtype=args.dtype,
        id2label=args.id2label, choice_temperature=args.choice_temperature, push_to_hub=args.push_to_hub,
        private=args.private, command=command,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; errors are reported on stderr with exit status 1."""
    parser = add_convert_arguments(argparse.ArgumentParser(description="Convert an original MAGE checkpoint."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "conversion/convert_original_mage.py", *argv])
    try:
        output = convert_from_args(args, command=command)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    logger.info("done: %s", output)
    return 0
