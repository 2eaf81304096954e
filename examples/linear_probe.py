#!/usr/bin/env python
"""Linear probe of frozen MAGE embeddings, as the original `main_linprobe.py`: features = `MageModel`
`pooler_output` (mean of the image tokens through `fc_norm`), head = BatchNorm1d(affine=False) + Linear, trained
with LARS (or SGD), linear warm-up then cosine; reports top-1 accuracy on the evaluation split.

The encoder is frozen, so features are computed once (centre crops; the original also random-crops training
images). Feature extraction is sharded when run under `accelerate launch`; the head is trained identically on
every process.

    python examples/linear_probe.py --model_name_or_path runs/fmnist-mage --train_data fashion_mnist.npz \
        --output_dir runs/fmnist-linprobe --epochs 90
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F
from transformers import HfArgumentParser

from mage_hf.training.arguments import check_output_dir
from mage_hf.training.data import load_image_data
from mage_hf.training.features import extract_features, load_mage_encoder
from mage_hf.training.lars import LARS
from mage_hf.training.metrics import accuracy, top_k_accuracy
from mage_hf.training.optim import absolute_learning_rate, warmup_cosine_lr
from mage_hf.training.transforms import ImageTransformConfig, to_rgb_image

logger = logging.getLogger(__name__)


@dataclass
class LinearProbeArguments:
    train_data: str = field(metadata={"help": "Image folder, .npz, save_to_disk folder or datasets name (labelled)."})
    output_dir: str = field(metadata={"help": "Results JSON and the head's weights."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A MAGE pipeline or model folder."})
    features: str = field(default="model", metadata={"help": "'model' (MAGE embeddings) or 'raw' (pixels, baseline)."})
    train_split: str = "train"
    eval_split: str = "test"
    image_column: str | None = None
    label_column: str | None = None
    image_size: int | None = field(default=None, metadata={"help": "Default: the model's (raw: the images' own)."})
    resize_mode: str = field(default="resize", metadata={"help": "'resize' or 'pad'."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    optimizer: str = field(default="lars", metadata={"help": "'lars' (the original) or 'sgd'."})
    epochs: int = field(default=90, metadata={"help": "The original: 90."})
    warmup_epochs: float = field(default=10, metadata={"help": "The original: 10."})
    batch_size: int = field(default=256, metadata={"help": "Head training batch (the original: 16384)."})
    base_learning_rate: float = field(default=0.1, metadata={"help": "lr = blr x batch / 256 (the original: 0.1)."})
    min_learning_rate: float = 0.0
    weight_decay: float = field(default=0.0, metadata={"help": "The original: 0."})
    momentum: float = 0.9
    feature_batch_size: int = field(default=256, metadata={"help": "Images per feature-extraction batch."})
    seed: int = 0
    overwrite_output_dir: bool = False

    def __post_init__(self):
        if self.features not in ("model", "raw"):
            raise ValueError(f"`features` must be 'model' or 'raw', got {self.features!r}")
        if self.features == "model" and self.model_name_or_path is None:
            raise ValueError("`features model` needs `model_name_or_path` (or use `--features raw`)")
        if self.optimizer not in ("lars", "sgd"):
            raise ValueError(f"`optimizer` must be 'lars' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("`epochs` and `batch_size` must be positive")


class LinearProbeHead(nn.Sequential):
    """Features (B, D) -> logits (B, C): BatchNorm1d without affine parameters, then a linear layer (the
    original's `Sequential(BatchNorm1d(affine=False, eps=1e-6), head)`, head weights N(0, 0.01))."""

    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__(nn.BatchNorm1d(feature_dim, affine=False, eps=1e-6), nn.Linear(feature_dim, num_classes))
        nn.init.trunc_normal_(self[1].weight, std=0.01)
        nn.init.zeros_(self[1].bias)


def load_features(args: LinearProbeArguments, accelerator: Accelerator):
    model, image_size = None, args.image_size
    if args.features == "model":
        model = load_mage_encoder(args.model_name_or_path).to(accelerator.device)
        image_size = image_size or model.config.image_size
    splits = {}
    for split, limit in ((args.train_split, args.max_train_samples), (args.eval_split, args.max_eval_samples)):
        data = load_image_data(args.train_data, split, args.image_column, args.label_column, limit, argument="train_data")
        if data.label_column is None:
            raise ValueError(f"`train_data` {args.train_data!r} has no labels for split {split!r}")
        size = image_size or max(to_rgb_image(data.dataset[0][data.image_column]).size)
        config = ImageTransformConfig(image_size=size, resize_mode=args.resize_mode, random_crop=False,
                                      horizontal_flip=False, interpolation="bicubic")
        features, labels = extract_features(model, data, config, accelerator, args.feature_batch_size)
        splits[split] = (torch.from_numpy(features), torch.from_numpy(labels).long(), data.class_names)
    return splits


def train_head(args: LinearProbeArguments, features: torch.Tensor, labels: torch.Tensor,
               num_classes: int) -> LinearProbeHead:
    torch.manual_seed(args.seed)
    head = LinearProbeHead(features.shape[1], num_classes)
    lr = absolute_learning_rate(args.base_learning_rate, args.batch_size)
    if args.optimizer == "lars":
        optimizer = LARS(head.parameters(), lr=lr, weight_decay=args.weight_decay, momentum=args.momentum)
    else:
        optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, len(features) // args.batch_size)
    head.train()
    for epoch in range(args.epochs):
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(args.seed + epoch))
        total = 0.0
        for step in range(steps_per_epoch):
            progress = epoch + step / steps_per_epoch
            rate = warmup_cosine_lr(progress, args.epochs, args.warmup_epochs, lr, args.min_learning_rate)
            for group in optimizer.param_groups:
                group["lr"] = rate
            batch = order[step * args.batch_size:(step + 1) * args.batch_size]
            loss = F.cross_entropy(head(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        if epoch == 0 or (epoch + 1) % max(1, args.epochs // 10) == 0:
            logger.info(f"epoch {epoch + 1}/{args.epochs}: loss {total / steps_per_epoch:.4f}, lr {rate:.4g}")
    return head.eval()


def main():
    (args,) = HfArgumentParser(LinearProbeArguments).parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    check_output_dir(args.output_dir, args.overwrite_output_dir, resuming=False)
    accelerator = Accelerator()
    splits = load_features(args, accelerator)
    train_features, train_labels, class_names = splits[args.train_split]
    eval_features, eval_labels, _ = splits[args.eval_split]
    num_classes = len(class_names)
    logger.info(f"features {tuple(train_features.shape)} train / {tuple(eval_features.shape)} eval, {num_classes} classes")
    head = train_head(args, train_features, train_labels, num_classes)
    with torch.no_grad():
        logits = head(eval_features).numpy()
    results = {"accuracy": accuracy(logits.argmax(1), eval_labels.numpy()),
               "train_accuracy": accuracy(head(train_features).argmax(1).numpy(), train_labels.numpy())}
    if num_classes > 5:
        results["top5_accuracy"] = top_k_accuracy(logits, eval_labels.numpy(), 5)
    logger.info(f"linear probe ({args.features} features): eval accuracy {100 * results['accuracy']:.2f}%")
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        weights = {k: v.contiguous() for k, v in head.state_dict().items()}
        save_file(weights, os.path.join(args.output_dir, "head.safetensors"))
        with open(os.path.join(args.output_dir, "linear_probe_results.json"), "w", encoding="utf-8") as handle:
            json.dump({"results": results, "class_names": class_names, "arguments": asdict(args)}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
