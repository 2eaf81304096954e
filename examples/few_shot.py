#!/usr/bin/env python
"""n-way k-shot classification on frozen MAGE embeddings (`MageModel.pooler_output`), or on raw pixels as a
baseline (`--features raw`).

Many random episodes (the same ones for every classifier): a prototype classifier (cosine similarity to the
class mean) and multinomial logistic regression; mean accuracy and its 95% interval.

    python examples/few_shot.py --model_name_or_path runs/fmnist-mage --data fashion_mnist.npz --split test \
        --n_way 5 --k_shot 1 5 --episodes 600
    python examples/few_shot.py --features raw --data fashion_mnist.npz --split test --k_shot 1 5
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
from transformers import HfArgumentParser

from mage_hf.training.data import load_image_data
from mage_hf.training.features import extract_features, load_mage_encoder
from mage_hf.training.few_shot import CLASSIFIERS, evaluate_few_shot
from mage_hf.training.transforms import ImageTransformConfig, to_rgb_image

logger = logging.getLogger(__name__)


@dataclass
class FewShotArguments:
    data: str = field(metadata={"help": "Image folder, .npz (x_<split>, y_<split>), save_to_disk folder or datasets name."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A MAGE pipeline or model folder."})
    features: str = field(default="model", metadata={"help": "'model' (MAGE embeddings) or 'raw' (pixels, baseline)."})
    split: str = field(default="test", metadata={"help": "Split the episodes are drawn from."})
    image_column: str | None = None
    label_column: str | None = None
    image_size: int | None = field(default=None, metadata={"help": "Default: the model's (raw: the images' own)."})
    resize_mode: str = field(default="resize", metadata={"help": "'resize' or 'pad' (see pretrain.py)."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N images of the split."})
    n_way: int = 5
    k_shot: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "One or more shot counts."})
    n_query: int = field(default=15, metadata={"help": "Query images per class and episode."})
    episodes: int = 600
    classifiers: list[str] = field(default_factory=lambda: ["prototype", "logistic"],
                                   metadata={"help": f"Some of {sorted(CLASSIFIERS)}."})
    batch_size: int = field(default=256, metadata={"help": "Images per feature-extraction batch."})
    seed: int = 0
    output_file: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})

    def __post_init__(self):
        if self.features not in ("model", "raw"):
            raise ValueError(f"`features` must be 'model' or 'raw', got {self.features!r}")
        if self.features == "model" and self.model_name_or_path is None:
            raise ValueError("`features model` needs `model_name_or_path` (or use `--features raw`)")
        for name in ("n_way", "n_query", "episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        if any(k < 1 for k in self.k_shot):
            raise ValueError(f"`k_shot` values must be positive, got {self.k_shot}")


def compute_features(args: FewShotArguments, accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray]:
    data = load_image_data(args.data, args.split, args.image_column, args.label_column, args.max_samples, argument="data")
    if data.label_column is None:
        raise ValueError(f"`data` {args.data!r} has no labels for split {args.split!r}")
    model = None
    if args.features == "model":
        model = load_mage_encoder(args.model_name_or_path).to(accelerator.device)
        image_size = args.image_size or model.config.image_size
    else:
        image_size = args.image_size or max(to_rgb_image(data.dataset[0][data.image_column]).size)
    config = ImageTransformConfig(image_size=image_size, resize_mode=args.resize_mode, random_crop=False,
                                  horizontal_flip=False, interpolation="bicubic")
    features, labels = extract_features(model, data, config, accelerator, args.batch_size)
    logger.info(f"{args.features} features {features.shape} for {len(labels)} images of split {args.split!r}")
    return features, labels


def main():
    (args,) = HfArgumentParser(FewShotArguments).parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    accelerator = Accelerator()
    torch.manual_seed(args.seed)
    features, labels = compute_features(args, accelerator)
    if not accelerator.is_main_process:
        return
    results = []
    for k_shot in args.k_shot:
        scores = evaluate_few_shot(features, labels, args.n_way, k_shot, args.n_query, args.episodes, args.seed,
                                   tuple(args.classifiers))
        for name, (mean, interval) in scores.items():
            results.append({"n_way": args.n_way, "k_shot": k_shot, "classifier": name, "accuracy": mean,
                            "interval95": interval, "episodes": args.episodes})
            logger.info(f"{args.n_way}-way {k_shot}-shot {name:>9}: {100 * mean:.2f}% +- {100 * interval:.2f}")
    if args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        with open(args.output_file, "w", encoding="utf-8") as handle:
            json.dump({"arguments": asdict(args), "results": results}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
