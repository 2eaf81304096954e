"""Model cards (README.md) for converted original MAGE checkpoints."""

from __future__ import annotations

ORIGINAL_REPOSITORY = "https://github.com/LTH14/mage"
PAPER_URL = "https://arxiv.org/abs/2211.09117"

CITATION = """@inproceedings{li2023mage,
  title     = {MAGE: MAsked Generative Encoder to Unify Representation Learning and Image Synthesis},
  author    = {Li, Tianhong and Chang, Huiwen and Mishra, Shlok Kumar and Zhang, Han and Katabi, Dina and Krishnan, Dilip},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""

# The authors' own numbers on ImageNet-1k at 256 px (README of the original repository); not re-measured here.
REPORTED_RESULTS: dict[str, list[tuple[str, str]]] = {
    "mage_vit_base_patch16": [
        ("class-unconditional generation FID", "11.1"),
        ("class-unconditional generation IS", "81.2"),
        ("linear probe top-1", "74.7%"),
    ],
    "mage_vit_large_patch16": [
        ("class-unconditional generation FID", "9.10"),
        ("class-unconditional generation IS", "105.1"),
        ("linear probe top-1", "78.9%"),
    ],
    "vit_base_patch16": [("fine-tuned top-1", "82.5%")],
    "vit_large_patch16": [("fine-tuned top-1", "83.9%")],
}

_PRETRAINING_USAGE = """```py
import torch
from mage_hf import MageModel, MageImageProcessor, MagePipeline

# generation (the original README setting: 20 steps, choice temperature {choice_temperature})
pipe = MagePipeline.from_pretrained("{location}")
images = pipe(batch_size=4, num_inference_steps=20, generator=torch.manual_seed(0)).images

# embeddings (the linear-probe feature is `pooler_output`)
model = MageModel.from_pretrained("{location}", subfolder="transformer")
processor = MageImageProcessor.from_pretrained("{location}", subfolder="transformer")
features = model(**processor(images=images, return_tensors="pt")).pooler_output
```
Without mage-hf installed, the embedding model loads with
`AutoModel.from_pretrained("{location}", subfolder="transformer", trust_remote_code=True)` (the modeling code is
in this folder)."""

_CLASSIFICATION_USAGE = """```py
import mage_hf  # registers the MAGE classes with the transformers Auto classes
from transformers import pipeline

classifier = pipeline("image-classification", model="{location}")
print(classifier("image.jpg"))
```
Without mage-hf installed, pass `trust_remote_code=True` (the modeling code is in this folder)."""


def _front_matter(task: str) -> str:
    tags = ["mage", "masked-image-modeling", "vqgan", "image-feature-extraction"]
    if task == "pretraining":
        pipeline_tag, library = "unconditional-image-generation", "diffusers"
    else:
        pipeline_tag, library = "image-classification", "transformers"
    lines = ["---", "license: mit", f"library_name: {library}", f"pipeline_tag: {pipeline_tag}", "tags:"]
    lines += [f"- {tag}" for tag in tags] + ["---"]
    return "\n".join(lines)


def _results_section(model_name: str | None) -> str:
    results = REPORTED_RESULTS.get(model_name or "")
    if not results:
        return "No results were reported by the authors for this configuration."
    rows = "\n".join(f"| {metric} | {value} |" for metric, value in results)
    return (
        "Reported by the authors for the original checkpoint on ImageNet-1k at 256 px "
        "(not re-measured after conversion):\n\n| metric | value |\n| --- | --- |\n" + rows
    )


def make_model_card(
    task: str,
    model_name: str | None,
    command: str,
    location: str,
    choice_temperature: float,
    checkpoint_name: str,
    notes: list[str] | None = None,
) -> str:
    """The README.md text of a converted folder.

    Args:
        task: `"pretraining"` (a `MagePipeline` folder) or `"image-classification"`.
        model_name: the original model factory (`mage_vit_base_patch16`, ...) or None for a custom config.
        command: the conversion command line, quoted for a shell.
        location: repository id or folder used in the usage example.
        choice_temperature: the scheduler's setting (pretraining only).
        checkpoint_name: file name of the original checkpoint.
        notes: extra facts about this conversion (one bullet each).
    """
    if task == "pretraining":
        what = (
            "a pre-trained MAGE (MAsked Generative Encoder) as a `MagePipeline` folder: `transformer/` "
            "(`MageForMaskedImageModeling`, usable alone as `MageModel` for embeddings), `vqvae/` (the VQGAN "
            "tokenizer, `MageVQModel`) and `scheduler/` (`MageScheduler`, MAGE's iterative decoding)"
        )
        usage = _PRETRAINING_USAGE.format(location=location, choice_temperature=choice_temperature)
    else:
        what = "a fine-tuned MAGE image classifier (`MageForImageClassification`) with its `MageImageProcessor`"
        usage = _CLASSIFICATION_USAGE.format(location=location)
    name = model_name or "a custom configuration"
    bullets = "\n".join(f"- {note}" for note in notes or [])
    return f"""{_front_matter(task)}

# MAGE ({name}), converted from the original checkpoint

This is {what}, converted to the Hugging Face format with
mage-hf from the authors' PyTorch checkpoint `{checkpoint_name}`
([original code]({ORIGINAL_REPOSITORY}), [paper]({PAPER_URL}), CVPR 2023).

MAGE tokenizes a 256 px image into 16x16 VQGAN tokens, masks a variable fraction of them and trains a ViT
encoder-decoder to predict the hidden ones; the same network gives image embeddings and generates images by
iterative decoding. Inputs are RGB pixels in [0, 1] (no mean/std normalisation).

## Usage

{usage}

## Conversion

```bash
{command}
```

Every key of the original checkpoint is mapped or deliberately dropped (modules the original builds but never
uses in its forward pass: `patch_embed`, `cls_token`, `pos_embed`, `mask_token`, `decoder_pos_embed`,
`decoder_pred`, `token_emb.position_ids`). The conversion code is tested against outputs of the original
implementation (a small random-weight model): identical token ids, other outputs within 1e-4 relative error in
float32.
{bullets}

## Results

{_results_section(model_name)}

## Licence

The original code and checkpoints are released by the authors under the MIT licence
([LICENSE]({ORIGINAL_REPOSITORY}/blob/main/LICENSE), Copyright (c) 2022 Tianhong Li).

## Citation

```bibtex
{CITATION}
```
"""
