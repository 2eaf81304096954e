#!/usr/bin/env python
"""Fine-tune a pre-trained MAGE as an image classifier (`MageForImageClassification`) with `Trainer`, as the
original `main_finetune.py`: layer-wise lr decay, drop path, label smoothing, mixup/cutmix, AdamW, warm-up +
cosine, lr = blr x total batch / 256. Augmentation: RandomResizedCrop(0.2-1, bicubic) + flip (the original's
RandAugment and random erasing are not reproduced).

`--max_train_samples_per_class K` fine-tunes on K labelled images per class. With `--recipe auto` (the default)
K <= 16 switches to the few-shot recipe (`--recipe few_shot`, `mage_hf.training.lp_ft.FEW_SHOT_RECIPE`): the head
reads every image token (flattened), a linear-probe warm start of the head on its standardised frozen features, then
30 epochs of full fine-tuning at lr 3e-5 with flips only (no mixup, cutmix, crops, label smoothing or layer decay),
and the saved weights are the average of the warm start and the fine-tuned ones (WiSE-FT). Any flag given explicitly
overrides the recipe's default.

The output folder is a classifier with its image processor: `pipeline("image-classification", model=DIR)`.

    python examples/finetune.py --model_name_or_path runs/fmnist-mage --train_data fashion_mnist.npz \
        --output_dir runs/fmnist-finetune --num_train_epochs 50 --per_device_train_batch_size 128
    python examples/finetune.py --model_name_or_path runs/fmnist-mage --train_data fashion_mnist.npz \
        --output_dir runs/fmnist-10shot --max_train_samples_per_class 10 --max_eval_samples 5000
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed

from mage_hf import MageForImageClassification, MageImageProcessor
from mage_hf.configuration_mage import CLASSIFIER_POOLINGS
from mage_hf.training.arguments import ImageDataArguments, check_output_dir, pipeline_subfolder, resolve_resume
from mage_hf.training.data import EpochCallback, PixelBatchTransform, collate_tensors, load_image_data
from mage_hf.training.few_shot import load_few_shot_data
from mage_hf.training.finetuning_trainer import MageFinetuningTrainer
from mage_hf.training.lp_ft import (
    FEW_SHOT_MAX_SHOTS,
    FEW_SHOT_RECIPE,
    interpolate_weights,
    warm_start_classifier,
    weights_snapshot,
)
from mage_hf.training.metrics import compute_classification_metrics
from mage_hf.training.mixup import MixupCutmix
from mage_hf.training.optim import absolute_learning_rate
from mage_hf.training.transforms import RESAMPLING, MageImageTransform

logger = logging.getLogger(__name__)

RECIPES = ("auto", "full", "few_shot")


@dataclass
class FinetuneModelArguments:
    model_name_or_path: str = field(metadata={"help": "A pre-trained MAGE pipeline or model folder."})
    layer_decay: float = field(default=0.65, metadata={"help": "Layer-wise lr decay (the original: 0.65 B, 0.75 L)."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth (the original: 0.1 B, 0.2 L)."})
    classifier_pooling: str = field(default="mean", metadata={"help": "'mean' (fc_norm of the mean image token), "
                                                                      "'cls' (the class token) or 'tokens' (every "
                                                                      "image token, flattened; few_shot: tokens)."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing (also inside mixup targets)."})
    mixup: float = field(default=0.8, metadata={"help": "Mixup Beta alpha (0 disables)."})
    cutmix: float = field(default=1.0, metadata={"help": "CutMix Beta alpha (0 disables)."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Probability of cutmix when both are on."})
    recipe: str = field(
        default="auto",
        metadata={"help": f"'full' (the original ImageNet recipe, the defaults shown), 'few_shot' (LP-FT, see "
                          f"mage_hf.training.lp_ft) or 'auto': few_shot when --max_train_samples_per_class <= "
                          f"{FEW_SHOT_MAX_SHOTS}, else full."},
    )
    linear_probe_warm_start: bool = field(
        default=False, metadata={"help": "Fit the head as a logistic regression on frozen features first (few_shot: on)."}
    )
    linear_probe_inverse_regularization: float = field(
        default=0.1, metadata={"help": "C of the warm-start logistic regression (C * sum of losses + |W|^2 / 2)."}
    )
    wise_ft_alpha: float = field(
        default=1.0, metadata={"help": "Save (1 - a) x the starting weights (the warm start) + a x the fine-tuned ones "
                                       "(WiSE-FT; 1 keeps the fine-tuned weights; few_shot: 0.5)."}
    )

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"`recipe` must be one of {RECIPES}, got {self.recipe!r}")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"`classifier_pooling` must be one of {CLASSIFIER_POOLINGS}, got {self.classifier_pooling!r}")
        if not 0.0 <= self.wise_ft_alpha <= 1.0:
            raise ValueError(f"`wise_ft_alpha` must be in [0, 1] (1 = the fine-tuned weights), got {self.wise_ft_alpha}")


@dataclass
class FinetuneDataArguments(ImageDataArguments):
    eval_split: str | None = field(default="test", metadata={"help": "Split to report accuracy on."})
    interpolation: str = field(default="bicubic", metadata={"help": "PIL resampling (the original: bicubic)."})
    max_train_samples_per_class: int | None = field(
        default=None, metadata={"help": "Few-shot fine-tuning: keep K random training images per class."}
    )


@dataclass
class MageFinetuningArguments(TrainingArguments):
    base_learning_rate: float = field(
        default=2.5e-4, metadata={"help": "lr = blr x total batch / 256 (0: use --learning_rate)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Train from scratch into a non-empty output_dir."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (none on norms and biases)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Cosine decay after the warm-up."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps or ratio (the original: 5 of 100 epochs)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False (batch transform)."})
    label_names: list[str] | None = field(default_factory=lambda: ["labels"], metadata={"help": "Label key."})
    logging_steps: float = field(default=50, metadata={"help": "Log every N steps."})


def load_classifier(model_args: FinetuneModelArguments, class_names: list[str]) -> MageForImageClassification:
    path = model_args.model_name_or_path
    if not os.path.isdir(path):
        raise ValueError(f"`model_name_or_path` {path!r} is not a folder (expected a MAGE pipeline or model folder)")
    model = MageForImageClassification.from_pretrained(
        path, subfolder=pipeline_subfolder(path, "transformer"), num_labels=len(class_names),
        id2label=dict(enumerate(class_names)), label2id={name: i for i, name in enumerate(class_names)},
        drop_path_rate=model_args.drop_path_rate, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        classifier_pooling=model_args.classifier_pooling, class_conditional=False,
    )
    # The original starts the head near zero (std 2e-5) so fine-tuning begins from the pre-trained features.
    torch.nn.init.trunc_normal_(model.classifier.weight, std=2e-5)
    torch.nn.init.zeros_(model.classifier.bias)
    return model


def load_splits(data_args: FinetuneDataArguments, training_args):
    if data_args.max_train_samples_per_class:
        train = load_few_shot_data(data_args.train_data, data_args.train_split, data_args.max_train_samples_per_class,
                                   training_args.seed, data_args.image_column, data_args.label_column,
                                   data_args.max_train_samples)
    else:
        train = load_image_data(data_args.train_data, data_args.train_split, data_args.image_column,
                                data_args.label_column, data_args.max_train_samples)
    if train.label_column is None:
        raise ValueError(f"`train_data` {data_args.train_data!r} has no labels (a label column, y_train or class folders)")
    evaluation = None
    if data_args.eval_split:
        evaluation = load_image_data(data_args.train_data, data_args.eval_split, data_args.image_column,
                                     data_args.label_column, data_args.max_eval_samples)
    return train, evaluation


def parse_arguments(argv: list[str] | None = None):
    """The three argument dataclasses, with the few-shot recipe's defaults when `--recipe` selects it (flags given
    explicitly keep their values)."""
    parser = HfArgumentParser((FinetuneModelArguments, FinetuneDataArguments, MageFinetuningArguments))
    known, _ = parser.parse_known_args(argv)
    recipe = known.recipe
    if recipe == "auto":
        shots = known.max_train_samples_per_class
        recipe = "few_shot" if shots is not None and shots <= FEW_SHOT_MAX_SHOTS else "full"
    if recipe == "few_shot":
        parser.set_defaults(**FEW_SHOT_RECIPE)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    model_args.recipe = recipe
    return model_args, data_args, training_args


def support_pixels(train, transform: MageImageTransform) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images in their evaluation view (no augmentation): (N, 3, S, S) pixels and (N,) labels."""
    view = train.dataset.with_transform(PixelBatchTransform(transform, train.image_column, train.label_column))
    rows = view[:]
    return rows["pixel_values"], rows["labels"]


def main(argv: list[str] | None = None):
    model_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], level=training_args.get_process_log_level())
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args.output_dir, training_args.overwrite_output_dir, resume is not None)
    set_seed(training_args.seed)

    train, evaluation = load_splits(data_args, training_args)
    model = load_classifier(model_args, train.class_names)
    image_size = model.config.image_size
    if data_args.image_size is not None and data_args.image_size != image_size:
        raise ValueError(f"`image_size` {data_args.image_size} differs from the model's image_size {image_size}")
    eval_image_transform = MageImageTransform(data_args.transform_config(image_size, False, training_args.seed))
    if model_args.linear_probe_warm_start:
        # Also when resuming: the checkpoint's weights replace it, but the warm start (deterministic given the
        # pre-trained model and the support images) is the anchor of the weight averaging below.
        warm_start_classifier(model, *support_pixels(train, eval_image_transform),
                              inverse_regularization=model_args.linear_probe_inverse_regularization,
                              batch_size=training_args.per_device_eval_batch_size)
    anchor = weights_snapshot(model) if model_args.wise_ft_alpha < 1.0 else None
    train_config = data_args.transform_config(image_size, train=True, seed=training_args.seed)
    train_transform = PixelBatchTransform(MageImageTransform(train_config), train.image_column, train.label_column)
    train.dataset.set_transform(train_transform)
    if evaluation is not None:
        evaluation.dataset.set_transform(PixelBatchTransform(eval_image_transform, evaluation.image_column,
                                                             evaluation.label_column))
    if training_args.base_learning_rate > 0:
        total_batch = training_args.train_batch_size * training_args.gradient_accumulation_steps * training_args.world_size
        training_args.learning_rate = absolute_learning_rate(training_args.base_learning_rate, total_batch)
    mixup = MixupCutmix(len(train.class_names), model_args.mixup, model_args.cutmix, model_args.mixup_prob,
                        model_args.mixup_switch_prob, model_args.label_smoothing)
    logger.info(f"{model_args.recipe} recipe: fine-tuning on {len(train.dataset)} images, "
                f"{len(train.class_names)} classes, lr {training_args.learning_rate:.3g}")

    trainer = MageFinetuningTrainer(
        model=model, args=training_args, train_dataset=train.dataset,
        eval_dataset=evaluation.dataset if evaluation is not None else None, data_collator=collate_tensors,
        compute_metrics=compute_classification_metrics, callbacks=[EpochCallback(train_transform)],
        layer_decay=model_args.layer_decay, mixup=mixup if mixup.active else None,
        label_smoothing=model_args.label_smoothing,
    )
    result = trainer.train(resume_from_checkpoint=resume)
    if anchor is not None:
        interpolate_weights(model, anchor, model_args.wise_ft_alpha)
        logger.info(f"WiSE-FT: saving {model_args.wise_ft_alpha:g} x the fine-tuned weights + "
                    f"{1 - model_args.wise_ft_alpha:g} x the starting ones")
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        # The pipeline then prepares images with the evaluation transform's filter.
        MageImageProcessor.from_mage_config(model.config, resample=RESAMPLING[data_args.interpolation]).save_pretrained(
            training_args.output_dir)
    if evaluation is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        return metrics
    return result.metrics


if __name__ == "__main__":
    main()
