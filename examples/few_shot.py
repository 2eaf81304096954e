#!/usr/bin/env python
"""Few-shot classification with MAGE, two protocols.

`--protocol episodes` (default): n-way k-shot episodes on frozen MAGE embeddings (`MageModel.pooler_output`; the
class token with `--features cls`, the flattened image tokens with `--features tokens`), or on raw pixels as a
baseline (`--features raw`). Many random episodes drawn from one split (the same ones for every classifier): a
prototype classifier (cosine similarity to the class mean) and multinomial logistic regression; mean accuracy and
its 95% interval.

`--protocol draws`: N-way K-shot over all N classes of the data, the protocol of `examples/finetune.py`. For each
seed and K, K support images per class are drawn from `--support_split` (`few_shot_indices`, the draw
`finetune.py --max_train_samples_per_class K --seed S` makes) and every route is scored on the same fixed test
images (the first `--max_samples` of `--split`):
`raw` (standardised logistic regression on pixels), `frozen` (the same on `pooler_output`), `frozen_cls` (the same
on the class token), `frozen_tokens` (the same on the flattened image tokens, the feature the few-shot recipe's
head reads) and `finetune` (the documented Trainer command, `finetune.py`'s few-shot recipe: linear-probe warm
start + fine-tuning). Prints one markdown table: mean and 95% interval over the seeds, and the paired gains of
fine-tuning over each frozen feature. The model's features of a split come from one pass over its images.

    python examples/few_shot.py --model_name_or_path runs/fmnist-mage --data fashion_mnist.npz --split test \
        --n_way 5 --k_shot 1 5 --episodes 600
    python examples/few_shot.py --features raw --data fashion_mnist.npz --split test --k_shot 1 5
    python examples/few_shot.py --protocol draws --model_name_or_path runs/fmnist-mage --data fashion_mnist.npz \
        --k_shot 1 5 10 --seeds 0 1 2 3 4 --max_samples 5000 --output_dir runs/few-shot-table
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import transformers
from accelerate import Accelerator
from transformers import HfArgumentParser

from mage_hf.training.data import load_image_data
from mage_hf.training.features import extract_feature_kinds, extract_features, load_mage_encoder
from mage_hf.evaluation import logistic_regression_probe
from mage_hf.training.few_shot import (
    CLASSIFIERS,
    evaluate_few_shot,
    few_shot_indices,
    load_image_rows,
    mean_and_interval,
    split_labels,
)
from mage_hf.training.transforms import ImageTransformConfig, to_rgb_image

logger = logging.getLogger(__name__)

PROTOCOLS = ("episodes", "draws")
# `--features` names -> `mage_hf.embeddings` kinds ("raw": pixels, no model).
FEATURES = {"model": "pooler", "cls": "cls", "tokens": "tokens", "raw": "raw"}
ROUTES = {"raw": "raw pixels, logistic regression", "frozen": "frozen pooler_output, logistic regression",
          "frozen_cls": "frozen class token, logistic regression",
          "frozen_tokens": "frozen image tokens, logistic regression",
          "finetune": "Trainer few-shot fine-tuning (LP-FT)"}
# The feature each logistic-regression route reads: pixels, `pooler_output`, the class token or the flattened
# image tokens after the final norm (the last is what the few-shot recipe's head reads, so the table shows what
# fine-tuning adds beyond its own warm start).
ROUTE_FEATURES = {"raw": "raw", "frozen": "model", "frozen_cls": "cls", "frozen_tokens": "tokens"}


@dataclass
class FewShotArguments:
    data: str = field(metadata={"help": "Image folder, .npz (x_<split>, y_<split>), save_to_disk folder or datasets name."})
    protocol: str = field(default="episodes", metadata={"help": f"One of {PROTOCOLS} (see the module docstring)."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "A MAGE pipeline or model folder."})
    features: str = field(default="model", metadata={"help": "'model' (MAGE `pooler_output`), 'cls' (the class token), "
                                                              "'tokens' (the flattened image tokens) or 'raw' "
                                                              "(pixels, baseline)."})
    split: str = field(default="test", metadata={"help": "Split the episodes are drawn from (draws: the test split)."})
    image_column: str | None = None
    label_column: str | None = None
    image_size: int | None = field(default=None, metadata={"help": "Default: the model's (raw: the images' own)."})
    resize_mode: str = field(default="resize", metadata={"help": "'resize' or 'pad' (see pretrain.py)."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N images of the split (draws: "
                                                                     "the fixed test images)."})
    n_way: int = field(default=5, metadata={"help": "episodes: classes per episode (draws: all classes of the data)."})
    k_shot: list[int] = field(default_factory=lambda: [1, 5], metadata={"help": "One or more shot counts."})
    n_query: int = field(default=15, metadata={"help": "Query images per class and episode."})
    episodes: int = 600
    classifiers: list[str] = field(default_factory=lambda: ["prototype", "logistic"],
                                   metadata={"help": f"Some of {sorted(CLASSIFIERS)}."})
    batch_size: int = field(default=256, metadata={"help": "Images per feature-extraction batch."})
    seed: int = 0
    output_file: str | None = field(default=None, metadata={"help": "Write the results as JSON here."})
    support_split: str = field(default="train", metadata={"help": "draws: the split the support images come from."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4], metadata={"help": "draws: support-draw seeds."})
    routes: list[str] = field(default_factory=lambda: list(ROUTES), metadata={"help": f"draws: some of {list(ROUTES)}."})
    inverse_regularization: float = field(default=0.1, metadata={"help": "draws: C of the logistic regressions."})
    output_dir: str | None = field(default=None, metadata={"help": "draws: keep the fine-tuned classifiers here "
                                                                    "(<dir>/k<K>-seed<S>); default: a temporary folder."})
    finetune_args: str = field(default="", metadata={"help": "draws: extra `finetune.py` flags, one string."})

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"`protocol` must be one of {PROTOCOLS}, got {self.protocol!r}")
        unknown = [route for route in self.routes if route not in ROUTES]
        if unknown:
            raise ValueError(f"`routes` must be some of {list(ROUTES)}, got {unknown}")
        if self.protocol == "draws" and self.model_name_or_path is None and set(self.routes) - {"raw"}:
            raise ValueError("`protocol draws` needs `model_name_or_path` for the frozen and finetune routes")
        if self.features not in FEATURES:
            raise ValueError(f"`features` must be one of {list(FEATURES)}, got {self.features!r}")
        if self.protocol == "episodes" and self.features != "raw" and self.model_name_or_path is None:
            raise ValueError(f"`features {self.features}` needs `model_name_or_path` (or use `--features raw`)")
        for name in ("n_way", "n_query", "episodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        if any(k < 1 for k in self.k_shot):
            raise ValueError(f"`k_shot` values must be positive, got {self.k_shot}")


def split_features(args: FewShotArguments, accelerator: Accelerator, split: str, features: tuple[str, ...],
                   max_samples: int | None = None, indices: np.ndarray | None = None,
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({name: features (N, D)}, labels (N,)) of `split` (its first `max_samples` images, then the rows
    `indices`) for each `FEATURES` name: "model" = `pooler_output` of centre views, "cls" = their class token,
    "tokens" = their flattened image tokens, "raw" = their pixels. The model's kinds come from one pass."""
    if indices is None:
        data = load_image_data(args.data, split, args.image_column, args.label_column, max_samples, argument="data")
    else:
        data = load_image_rows(args.data, split, indices, args.image_column, args.label_column, max_samples, "data")
    if data.label_column is None:
        raise ValueError(f"`data` {args.data!r} has no labels for split {split!r}")
    values, labels = {}, None

    def transform_config(image_size: int) -> ImageTransformConfig:
        return ImageTransformConfig(image_size=image_size, resize_mode=args.resize_mode, random_crop=False,
                                    horizontal_flip=False, interpolation="bicubic")

    if "raw" in features:
        image_size = args.image_size or max(to_rgb_image(data.dataset[0][data.image_column]).size)
        values["raw"], labels = extract_features(None, data, transform_config(image_size), accelerator,
                                                 args.batch_size)
    model_features = [name for name in features if name != "raw"]
    if model_features:
        model = load_mage_encoder(args.model_name_or_path).to(accelerator.device)
        kinds, labels = extract_feature_kinds(model, data, transform_config(args.image_size or model.config.image_size),
                                              accelerator, args.batch_size,
                                              tuple(FEATURES[name] for name in model_features))
        values.update({name: kinds[FEATURES[name]] for name in model_features})
    for name, array in values.items():
        logger.info(f"{name} features {array.shape} for {len(labels)} images of split {split!r}")
    return values, labels


def run_episodes(args: FewShotArguments, accelerator: Accelerator) -> list[dict] | None:
    features, labels = split_features(args, accelerator, args.split, (args.features,), args.max_samples)
    features = features[args.features]
    if not accelerator.is_main_process:
        return None
    results = []
    for k_shot in args.k_shot:
        scores = evaluate_few_shot(features, labels, args.n_way, k_shot, args.n_query, args.episodes, args.seed,
                                   tuple(args.classifiers))
        for name, (mean, interval) in scores.items():
            results.append({"n_way": args.n_way, "k_shot": k_shot, "classifier": name, "accuracy": mean,
                            "interval95": interval, "episodes": args.episodes})
            logger.info(f"{args.n_way}-way {k_shot}-shot {name:>9}: {100 * mean:.2f}% +- {100 * interval:.2f}")
    return results


def load_finetune_main():
    """`main` of `finetune.py` beside this script (examples are scripts, not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune.py")
    spec = importlib.util.spec_from_file_location("mage_hf_finetune_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


def finetune_accuracy(args: FewShotArguments, k_shot: int, seed: int, output_dir: str) -> float:
    """Test accuracy of `finetune.py --max_train_samples_per_class k_shot --seed seed` (its recipe's defaults)."""
    argv = ["--model_name_or_path", args.model_name_or_path, "--train_data", args.data,
            "--train_split", args.support_split, "--eval_split", args.split, "--resize_mode", args.resize_mode,
            "--max_train_samples_per_class", str(k_shot), "--seed", str(seed), "--output_dir", output_dir,
            "--report_to", "none", "--disable_tqdm", "true"]
    for name in ("image_column", "label_column", "max_samples"):
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{'max_eval_samples' if name == 'max_samples' else name}", str(value)]
    metrics = load_finetune_main()(argv + shlex.split(args.finetune_args))
    return float(metrics["eval_accuracy"])


def draws_table(scores: dict[str, dict[int, list[float]]], k_shots: list[int], num_classes: int, num_test: int) -> str:
    """Markdown: one row per K, mean +- 95% interval (percent) per route, and the paired gain of fine-tuning over
    each frozen-feature route that was run."""
    routes = [route for route in ROUTES if route in scores]
    baselines = [route for route in ("frozen", "frozen_cls", "frozen_tokens") if route in scores and "finetune" in scores]
    header = [f"K ({num_classes}-way, {num_test} test images)"] + [ROUTES[route] for route in routes]
    header += [f"fine-tuning minus {ROUTES[route].split(',')[0]} (paired)" for route in baselines]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for k_shot in sorted(k_shots):
        cells = [str(k_shot)]
        columns = [scores[route][k_shot] for route in routes]
        columns += [[a - b for a, b in zip(scores["finetune"][k_shot], scores[route][k_shot])] for route in baselines]
        for values in columns:
            mean, interval = mean_and_interval(values)
            cells.append(f"{100 * mean:.1f} ± {100 * interval:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_draws(args: FewShotArguments, accelerator: Accelerator) -> dict | None:
    labels = split_labels(args.data, args.support_split, args.label_column, argument="data")
    draws = {(k, seed): few_shot_indices(labels, k, seed) for k in args.k_shot for seed in args.seeds}
    union = np.unique(np.concatenate(list(draws.values())))
    row_of = {int(index): row for row, index in enumerate(union)}
    frozen_routes = [route for route in ROUTE_FEATURES if route in args.routes]
    names = tuple(ROUTE_FEATURES[route] for route in frozen_routes)
    fitted = {}
    if frozen_routes:
        train_x, train_y = split_features(args, accelerator, args.support_split, names, indices=union)
        test_x, test_y = split_features(args, accelerator, args.split, names, args.max_samples)
        for route in frozen_routes:
            name = ROUTE_FEATURES[route]
            fitted[route] = (torch.from_numpy(train_x[name]), torch.from_numpy(train_y),
                             torch.from_numpy(test_x[name]), torch.from_numpy(test_y))
    scores = {route: {k: [] for k in args.k_shot} for route in ROUTES if route in args.routes}
    num_test = None
    with tempfile.TemporaryDirectory() as scratch:
        for (k_shot, seed), indices in draws.items():
            rows = torch.tensor([row_of[int(i)] for i in indices])
            for route, (train_x, train_y, test_x, test_y) in fitted.items():
                num_test = len(test_y)
                scores[route][k_shot].append(logistic_regression_probe(
                    train_x[rows], train_y[rows], test_x, test_y, args.inverse_regularization))
            if "finetune" in scores:
                output_dir = os.path.join(args.output_dir or scratch, f"k{k_shot}-seed{seed}")
                scores["finetune"][k_shot].append(finetune_accuracy(args, k_shot, seed, output_dir))
            logger.info(f"{k_shot}-shot seed {seed}: " + ", ".join(
                f"{route} {100 * values[k_shot][-1]:.2f}%" for route, values in scores.items()))
    if not accelerator.is_main_process:
        return None
    num_test = num_test or args.max_samples
    table = draws_table(scores, args.k_shot, int(labels.max()) + 1, num_test)
    logger.info("\n" + table)
    return {"table": table, "scores": {route: {str(k): v for k, v in values.items()} for route, values in scores.items()},
            "support_indices": {f"k{k}-seed{seed}": indices.tolist() for (k, seed), indices in draws.items()}}


def main():
    (args,) = HfArgumentParser(FewShotArguments).parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    accelerator = Accelerator()
    torch.manual_seed(args.seed)
    results = (run_episodes if args.protocol == "episodes" else run_draws)(args, accelerator)
    if results is not None and args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        partial = f"{args.output_file}.partial"
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump({"arguments": asdict(args), "results": results}, handle, indent=2)
        os.replace(partial, args.output_file)
    return results


if __name__ == "__main__":
    main()
