#!/usr/bin/env python
"""Compare VQ tokenizers on the Fashion-MNIST test split: what the reconstruction keeps of each image.

    python examples/evaluate_tokenizer.py --data data/fashion_mnist.npz \
        --tokenizers runs/vq_a runs/vq_b --names "no GAN" "GAN" --out runs/tokenizers.json

Each tokenizer is a `MageVQModel` folder or a pipeline folder (its `vqvae/` is used). For every one, the test images
(the training loader's deterministic 32 px view) go through tokenize -> decode_tokens, and the script prints one
Markdown table row with:
- PSNR: the mean per-image PSNR (dB), the number the README and `evaluate_default.py` report;
- codebook usage on the test tokens: the share of codes used at least once and the perplexity (exp of the usage
  entropy; the codebook size when every code is used equally);
- rFID-FMNIST-CNN: the Frechet distance between the reconstructions and the real test images in the 128-d feature
  space of the judge CNN `evaluate_default.py` trains (same data, epochs and seed, so the same judge), i.e. the
  reconstruction FID that a GAN term is meant to lower even where it costs PSNR;
- judge accuracy on the reconstructions (does the class survive tokenization), next to its accuracy on the real
  test images.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np
import torch

from evaluate_default import to_pixels  # the sibling script's image preparation, so both measure the same images
from mage_hf import MageVQModel
from mage_hf.evaluation import frechet_distance, psnr, reconstruct
from mage_hf.sample_quality import JUDGE_FILE_HELP, judge_outputs, load_or_train_sample_judge
from mage_hf.training.vq_training import codebook_usage

logger = logging.getLogger("evaluate_tokenizer")


def load_tokenizer(path: str) -> MageVQModel:
    """A `MageVQModel` from its own folder or from a pipeline folder's `vqvae/`."""
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return MageVQModel.from_pretrained(path, subfolder="vqvae").eval()
    return MageVQModel.from_pretrained(path).eval()


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="fashion_mnist.npz (examples/prepare_fashion_mnist.py)")
    parser.add_argument("--tokenizers", nargs="+", required=True, help="MageVQModel or pipeline folders")
    parser.add_argument("--names", nargs="+", help="one table label per tokenizer (default: the folder names)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the tokenizers' `sample_size`")
    parser.add_argument("--judge-epochs", type=int, default=3, help="as evaluate_default.py, for the same judge")
    parser.add_argument("--judge", default=None, help=JUDGE_FILE_HELP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-train-samples", type=int, default=None, help="subsample the judge's training images")
    parser.add_argument("--max-test-samples", type=int, default=None, help="subsample the test split (quick runs)")
    parser.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    names = args.names or [os.path.basename(os.path.normpath(path)) for path in args.tokenizers]
    if len(names) != len(args.tokenizers):
        parser.error(f"--names needs one label per tokenizer ({len(args.tokenizers)}), got {len(names)}")
    for path in [args.data, *args.tokenizers]:
        if not os.path.exists(path):
            parser.error(f"{path} does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizers = [load_tokenizer(path) for path in args.tokenizers]
    sizes = {vqvae.config.sample_size for vqvae in tokenizers}
    if args.image_size is None and len(sizes) > 1:
        parser.error(f"the tokenizers were made for different image sizes {sorted(sizes)}; pass --image-size")
    size = args.image_size or sizes.pop()

    data = np.load(args.data)
    x_train, y_train = data["x_train"][: args.max_train_samples], data["y_train"][: args.max_train_samples]
    x_test, y_test = data["x_test"][: args.max_test_samples], torch.from_numpy(data["y_test"][: args.max_test_samples])
    test_pixels = to_pixels(x_test, size)
    judge = load_or_train_sample_judge(args.judge, to_pixels(x_train, size)[:, :1], torch.from_numpy(y_train),
                                       args.judge_epochs, args.seed, len(data["class_names"]))
    test_logits, reference = judge_outputs(judge, test_pixels[:, :1])
    results = {"data": os.path.abspath(args.data), "num_test": len(x_test),
               "judge_test_accuracy": float((test_logits.argmax(1) == y_test).float().mean()), "tokenizers": {}}

    for name, path, vqvae in zip(names, args.tokenizers, tokenizers):
        tokens, recon = reconstruct(vqvae, test_pixels)
        counts = torch.bincount(tokens.flatten(), minlength=vqvae.config.codebook_size)
        logits, features = judge_outputs(judge, recon.mean(1, keepdim=True))
        row = {"path": os.path.abspath(path), "psnr_db": float(psnr(recon, test_pixels).mean()),
               **codebook_usage(counts), "rfid_fmnist_cnn": frechet_distance(features, reference),
               "judge_accuracy_on_reconstructions": float((logits.argmax(1) == y_test).float().mean())}
        results["tokenizers"][name] = row
        logger.info("%s: %s", name, {k: v for k, v in row.items() if k != "path"})

    lines = [f"| tokenizer ({results['num_test']} test images) | PSNR | codes used | perplexity | rFID-FMNIST-CNN "
             f"| judge accuracy on reconstructions (real: {100 * results['judge_test_accuracy']:.1f}%) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, row in results["tokenizers"].items():
        lines.append(f"| {name} | {row['psnr_db']:.2f} dB | {100 * row['used_fraction']:.1f}% | {row['perplexity']:.0f} "
                     f"| {row['rfid_fmnist_cnn']:.2f} | {100 * row['judge_accuracy_on_reconstructions']:.1f}% |")
    print("\n".join(lines))  # the script's product: one table
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
