#!/usr/bin/env python
"""Choose a class-conditional MAGE pipeline's default guidance by measurement, and save it with the model.

    python examples/sampling_curves.py --model runs/default_mage --data data/fashion_mnist.npz \
        --out runs/sampling_curves.json --plot docs/images/sampling_curves.png --write-default

1. A judge CNN is trained on the real training images (`mage_hf.sample_quality`, as in `evaluate_default.py`).
2. Guidance sweep: for every guidance scale and schedule, `--samples-per-class` samples of every class at
   `--steps` decoding steps; each point gets its class agreement (samples the judge labels as requested) and
   FID-FMNIST-CNN (Frechet distance to the test images in the judge's feature space).
3. The rule: among the points whose FID is within `--fid-tolerance` (relative) of the lowest, the one with the
   highest class agreement (then the smaller scale). Guidance trades diversity for agreement; FID penalises
   both lost diversity and wrong classes, so the rule keeps the distribution close to the data and takes the
   agreement that comes at no real FID cost.
4. Steps sweep at the chosen guidance (reported and plotted; the pipeline's `num_inference_steps` default stays
   the caller's choice of speed).
5. `--write-default` writes the chosen `default_guidance_scale` / `default_guidance_schedule` into the model
   folder's `model_index.json` (only those two keys, atomically), so the plain call `pipe(class_labels=...)` uses
   them. `--plot` (needs matplotlib) draws both sweeps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import numpy as np
import torch

from evaluate_default import generate, to_pixels  # the sibling script's sampling and image preparation
from mage_hf import MagePipeline
from mage_hf.pipeline_mage import GUIDANCE_SCHEDULES
from mage_hf.sample_quality import JUDGE_FILE_HELP, judge_outputs, judge_samples, load_or_train_sample_judge

logger = logging.getLogger("sampling_curves")


def choose_guidance(points: list[dict], fid_tolerance: float) -> dict:
    """The point (dicts with `guidance_scale`, `guidance_schedule`, `class_accuracy`, `fid`) with the highest
    class agreement among those whose FID is at most (1 + `fid_tolerance`) x the lowest; ties: smaller scale."""
    if not points:
        raise ValueError("no sweep points to choose from")
    best_fid = min(point["fid"] for point in points)
    candidates = [point for point in points if point["fid"] <= best_fid * (1 + fid_tolerance)]
    return max(candidates, key=lambda point: (point["class_accuracy"], -point["guidance_scale"]))


def write_default_guidance(model_dir: str, guidance_scale: float, guidance_schedule: str) -> None:
    """Set the two default-guidance keys of `model_dir/model_index.json`, keeping every other key; atomic."""
    path = os.path.join(model_dir, "model_index.json")
    with open(path, encoding="utf-8") as handle:
        index = json.load(handle)
    before = (index.get("default_guidance_scale"), index.get("default_guidance_schedule"))
    index["default_guidance_scale"], index["default_guidance_schedule"] = float(guidance_scale), guidance_schedule
    handle = tempfile.NamedTemporaryFile("w", dir=model_dir, suffix=".json.tmp", delete=False, encoding="utf-8")
    with handle:
        json.dump(index, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(handle.name, path)
    logger.info("%s: default guidance %s -> (%s, %s)", path, before, guidance_scale, guidance_schedule)


def save_plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    figure, (by_guidance, by_steps) = plt.subplots(1, 2, figsize=(10, 3.6))
    for schedule in results["schedules"]:
        points = [p for p in results["guidance_sweep"] if p["guidance_schedule"] == schedule]
        scales = [p["guidance_scale"] for p in points]
        by_guidance.plot(scales, [100 * p["class_accuracy"] for p in points], "o-", label=f"agreement, {schedule}")
        twin = by_guidance.twinx() if schedule == results["schedules"][0] else twin
        twin.plot(scales, [p["fid"] for p in points], "s--", label=f"FID, {schedule}")
    chosen = results["chosen"]
    by_guidance.axvline(chosen["guidance_scale"], color="grey", lw=0.8)
    by_guidance.set(xlabel=f"guidance scale ({results['steps']} steps)", ylabel="recognised as requested (%)")
    twin.set_ylabel("FID-FMNIST-CNN")
    by_guidance.legend(loc="lower left", fontsize=7)
    twin.legend(loc="upper right", fontsize=7)
    steps = [p["num_inference_steps"] for p in results["steps_sweep"]]
    by_steps.plot(steps, [100 * p["class_accuracy"] for p in results["steps_sweep"]], "o-", label="agreement")
    twin_steps = by_steps.twinx()
    twin_steps.plot(steps, [p["fid"] for p in results["steps_sweep"]], "s--", color="C1", label="FID")
    by_steps.set(xlabel=f"decoding steps (guidance {chosen['guidance_scale']:g}, {chosen['guidance_schedule']})",
                 ylabel="recognised as requested (%)")
    twin_steps.set_ylabel("FID-FMNIST-CNN")
    by_steps.legend(loc="lower left", fontsize=7)
    twin_steps.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)
    logger.info("wrote %s", path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a class-conditional MagePipeline folder")
    parser.add_argument("--data", required=True, help="fashion_mnist.npz (examples/prepare_fashion_mnist.py)")
    parser.add_argument("--out", help="write the sweep as JSON here")
    parser.add_argument("--plot", help="draw the curves into this PNG (needs matplotlib)")
    parser.add_argument("--write-default", action="store_true",
                        help="save the chosen guidance in the model folder's model_index.json")
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument("--guidance-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0])
    parser.add_argument("--schedules", nargs="+", default=list(GUIDANCE_SCHEDULES), choices=GUIDANCE_SCHEDULES)
    parser.add_argument("--steps", type=int, default=12, help="decoding steps of the guidance sweep")
    parser.add_argument("--steps-sweep", type=int, nargs="*", default=[4, 8, 12, 16, 24])
    parser.add_argument("--fid-tolerance", type=float, default=0.05, help="relative FID slack of the rule")
    parser.add_argument("--judge-epochs", type=int, default=3)
    parser.add_argument("--judge", default=None, help=JUDGE_FILE_HELP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-train-samples", type=int, default=None, help="subsample the train split (quick runs)")
    parser.add_argument("--max-test-samples", type=int, default=None, help="subsample the test split (quick runs)")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.data):
        parser.error(f"--data {args.data} does not exist")
    if args.samples_per_class < 2:
        parser.error(f"--samples-per-class must be >= 2 (a Frechet distance needs a covariance), got {args.samples_per_class}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = MagePipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if not pipe.transformer.config.class_conditional:
        raise SystemExit(f"--model {args.model} is unconditional: guidance needs a class-conditional model")
    data = np.load(args.data)
    x_train, y_train = data["x_train"][: args.max_train_samples], data["y_train"][: args.max_train_samples]
    x_test = data["x_test"][: args.max_test_samples]
    size = pipe.transformer.config.image_size
    num_classes = len(data["class_names"])
    judge = load_or_train_sample_judge(args.judge, to_pixels(x_train, size)[:, :1], torch.from_numpy(y_train),
                                       args.judge_epochs, args.seed, num_classes)
    _, reference = judge_outputs(judge, to_pixels(x_test, size)[:, :1])
    requested = [c for c in range(num_classes) for _ in range(args.samples_per_class)]

    def measure(guidance_scale: float, guidance_schedule: str, steps: int) -> dict:
        start = time.perf_counter()
        samples = generate(pipe, requested, len(requested), guidance_scale, steps, args.seed + 10**6, 100,
                           guidance_schedule=guidance_schedule)
        quality = judge_samples(judge, samples.mean(1, keepdim=True), torch.tensor(requested), reference)
        point = {"guidance_scale": guidance_scale, "guidance_schedule": guidance_schedule, "num_inference_steps": steps,
                 "class_accuracy": quality.class_accuracy, "fid": quality.fid,
                 "seconds": round(time.perf_counter() - start, 2)}
        logger.info("%s", point)
        return point

    sweep = [measure(scale, schedule, args.steps) for schedule in args.schedules for scale in args.guidance_scales]
    chosen = choose_guidance(sweep, args.fid_tolerance)
    steps_sweep = [chosen if steps == args.steps else measure(chosen["guidance_scale"], chosen["guidance_schedule"], steps)
                   for steps in args.steps_sweep]
    results = {"model": os.path.abspath(args.model), "samples_per_class": args.samples_per_class,
               "steps": args.steps, "schedules": args.schedules, "fid_tolerance": args.fid_tolerance,
               "guidance_sweep": sweep, "chosen": chosen, "steps_sweep": steps_sweep}
    print(format_table(results))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    if args.plot:
        save_plot(results, args.plot)
    if args.write_default:
        write_default_guidance(args.model, chosen["guidance_scale"], chosen["guidance_schedule"])
    return results


def format_table(results: dict) -> str:
    lines = ["| guidance | schedule | steps | recognised as requested | FID-FMNIST-CNN | s |", "|---|---|---|---|---|---|"]
    chosen = results["chosen"]
    for point in results["guidance_sweep"] + [p for p in results["steps_sweep"] if p is not chosen]:
        mark = " **(chosen)**" if point is chosen else ""
        lines.append(f"| {point['guidance_scale']:g}{mark} | {point['guidance_schedule']} | "
                     f"{point['num_inference_steps']} | {100 * point['class_accuracy']:.1f}% | {point['fid']:.2f} | "
                     f"{point['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
