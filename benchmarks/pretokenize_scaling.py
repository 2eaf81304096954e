"""Pre-tokenization speed on 1 vs N processes: `mage_hf.training.pretokenize.pretokenize` (what
`examples/pretrain.py --pretokenize` runs in every process) on the same images and tokenizer, printed as one
markdown table.

Each row starts N worker processes (this script with `--worker`, a gloo process group on 127.0.0.1, each with
`--threads` intra-op threads and, with `--device cuda`, GPU `rank % device_count`). Every worker loads the data
and the tokenizer and tokenizes one warm-up batch before the clock starts, so imports, loading and first-call
set-up are not timed; the clock runs from a barrier to the moment every process holds the combined cache.
Columns: `tokenize s` is the slowest process's own shards, `combine s` is process 0 concatenating the shards,
`images/s` = images / total. `same cache` compares the cache's sha256 with the 1-process row's (the sharded cache
must be the same bytes).

Tokenizers: `default` (the shipped default model's tokenizer, `mage_hf.DEFAULT_MODEL_PATH`/vqvae, 32 px),
`vitb` (the original's VQGAN shapes, `MageVQModel()` with random weights, 256 px: 128.6 GFLOP per view), `tiny`
(seconds). Images: `tests/data/fashion_mnist_5k.npz` (4000 training images).

    python benchmarks/pretokenize_scaling.py                                    # default, 2048 images, 1 vs 2
    python benchmarks/pretokenize_scaling.py --tokenizer vitb --num-images 16 --batch-size 2 --shard-size 4
    python benchmarks/pretokenize_scaling.py --processes 1 2 4 --threads 2 --device cuda
    python benchmarks/pretokenize_scaling.py --quick                            # tiny tokenizer, seconds
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("pretokenize_scaling")

REPO_ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST_SUBSET = REPO_ROOT / "tests" / "data" / "fashion_mnist_5k.npz"
TINY_VQ_CONFIG = {"base_channels": 32, "channel_multipliers": [1, 2], "num_res_blocks": 1, "latent_channels": 32,
                  "codebook_size": 16, "sample_size": 16}
WARMUP_IMAGES = 2
WORKER_TIMEOUT_S = 3600


def build_tokenizer(name: str):
    """(tokenizer in eval mode, image size in pixels)."""
    import torch

    from mage_hf import DEFAULT_MODEL_PATH, MageVQModel

    torch.manual_seed(0)
    if name == "default":
        vqvae = MageVQModel.from_pretrained(os.path.join(DEFAULT_MODEL_PATH, "vqvae"))
    elif name == "vitb":
        vqvae = MageVQModel()
    else:
        vqvae = MageVQModel(**TINY_VQ_CONFIG)
    return vqvae.eval(), vqvae.config.sample_size


def worker(args: argparse.Namespace) -> None:
    """One process of a row: rank and world size from RANK / WORLD_SIZE; process 0 writes `--result`."""
    import torch
    import torch.distributed as dist

    from mage_hf.training.data import load_image_data
    from mage_hf.training.pretokenize import pretokenize
    from mage_hf.training.transforms import ImageTransformConfig, MageImageTransform

    from transformers.utils import logging as transformers_logging

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    device = f"cuda:{rank % torch.cuda.device_count()}" if args.device == "cuda" else "cpu"
    vqvae, image_size = build_tokenizer(args.tokenizer)
    vqvae.to(device)
    data = load_image_data(str(FASHION_MNIST_SUBSET), max_samples=args.num_images)
    transform = MageImageTransform(ImageTransformConfig(image_size=image_size, seed=0))
    warmup = torch.stack([transform(image) for image in data.dataset[:WARMUP_IMAGES][data.image_column]])
    vqvae.tokenize(warmup.to(device))
    stamps = []

    def barrier() -> None:  # records when this process reached and left each barrier
        stamps.append(time.perf_counter())
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        dist.barrier()
        stamps.append(time.perf_counter())

    barrier()
    start = stamps[-1]
    dataset = pretokenize(data, vqvae, transform, args.views, args.cache_dir, "fashion-mnist-benchmark",
                          args.batch_size, device, process_index=rank, num_processes=world_size,
                          shard_size=args.shard_size, barrier=barrier)
    total = time.perf_counter() - start
    # stamps: [warm-up in, out, tokenized in, out, combined in, out]
    timings = [None] * world_size
    dist.all_gather_object(timings, {"tokenize": stamps[2] - start, "combine": stamps[4] - stamps[3]})
    if rank == 0:
        cache = dataset.cache_files[0]["filename"]
        result = {"total": total, "tokenize": max(t["tokenize"] for t in timings), "combine": timings[0]["combine"],
                  "sha256": hashlib.sha256(Path(cache).read_bytes()).hexdigest(), "rows": len(dataset)}
        Path(args.result).write_text(json.dumps(result))
    dist.destroy_process_group()


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_row(args: argparse.Namespace, num_processes: int, work_dir: str) -> dict:
    """Start `num_processes` workers on a fresh cache folder; process 0's timings."""
    cache_dir = os.path.join(work_dir, f"cache-{num_processes}")
    result = os.path.join(work_dir, f"{num_processes}.json")
    command = [sys.executable, __file__, "--worker", "--cache-dir", cache_dir, "--result", result,
               "--tokenizer", args.tokenizer, "--num-images", str(args.num_images), "--views", str(args.views),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
    if args.shard_size is not None:
        command += ["--shard-size", str(args.shard_size)]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port(), "WORLD_SIZE": str(num_processes),
            "OMP_NUM_THREADS": str(args.threads)}
    workers = [subprocess.Popen(command, env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)})
               for rank in range(num_processes)]
    codes = [process.wait(timeout=WORKER_TIMEOUT_S) for process in workers]
    if any(codes):
        raise RuntimeError(f"{num_processes}-process row failed: worker exit codes {codes}")
    return json.loads(Path(result).read_text())


def table(args: argparse.Namespace, rows: list[tuple[int, dict]]) -> str:
    reference = dict(rows).get(1)
    lines = [f"Tokenizer `{args.tokenizer}`, {args.num_images} images x {args.views} views, batch {args.batch_size}, "
             f"{args.threads} thread(s) per process, {args.device}", "",
             "| processes | tokenize s | combine s | total s | images/s | speed-up | same cache as 1 process |",
             "|---|---|---|---|---|---|---|"]
    base = reference["total"] if reference else None
    for processes, result in rows:
        speedup = f"{base / result['total']:.2f}x" if base else "n/a"
        same = "n/a" if reference is None else ("yes" if result["sha256"] == reference["sha256"] else "NO")
        lines.append(f"| {processes} | {result['tokenize']:.2f} | {result['combine']:.2f} | {result['total']:.2f} | "
                     f"{args.num_images / result['total']:.3g} | {speedup} | {same} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="default", choices=["default", "vitb", "tiny"])
    parser.add_argument("--num-images", type=int, default=2048)
    parser.add_argument("--views", type=int, default=1, help="augmented views per image (K)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per tokenizer batch")
    parser.add_argument("--shard-size", type=int, default=None, help="rows per shard (default: the library's)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny tokenizer, 64 images, batch 8, shards of 16")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokenizer, args.num_images, args.batch_size, args.shard_size = "tiny", 64, 8, 16
    if not 1 <= args.num_images <= 4000:
        parser.error(f"--num-images must be in [1, 4000] (the Fashion-MNIST subset), got {args.num_images}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="pretokenize-scaling-") as work_dir:
        rows = []
        for processes in args.processes:
            logger.info(f"{processes} process(es) ...")
            rows.append((processes, run_row(args, processes, work_dir)))
    print(table(args, rows))
    if args.json:
        Path(args.json).write_text(json.dumps([{"processes": p, **r} for p, r in rows], indent=2))


if __name__ == "__main__":
    main()
