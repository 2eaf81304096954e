"""What a user's call costs, from the command line to the last pixel, side by side with the original loop.

    python benchmarks/end_to_end.py                        # ~5 min on 2 CPU cores (3 rounds)
    python benchmarks/end_to_end.py --rounds 5 --json e2e.json
    python benchmarks/end_to_end.py --quick                # tiny shapes, a few seconds (run by the test suite)

Prints one markdown table with a target and a status per row:
- 20-step generation of one image at the published ViT-B/256 shapes (random weights, `choice_temperature` 6.0 as
  the original README's ViT-B command), three variants timed in the same process, interleaved round by round:
  `MagePipeline` float32, `MagePipeline.from_pretrained(..., torch_dtype=torch.bfloat16)` (the whole call, as the
  library runs it), and the **original-loop baseline** (`original_loop_generate`, below);
- the bf16 call's accuracy at those shapes: first-step token agreement with float32 and the PSNR of its decoded
  pixels against the exact float32 decode of the same tokens;
- the embedded default model (`mage_hf.DEFAULT_MODEL_PATH`): one `pipe(...)` call for 1, 16 and 64 images;
- the command line as a subprocess: `mage-hf generate --num-images 16 --out FILE` and `mage-hf --help`.

Every round runs every timed variant once, in a rotated order, so load from other processes hits all of them
alike; a row reports the minimum and the median over the rounds, and ratios are taken between minimums (the
median of the per-round ratios is shown beside them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import cpu_name, psnr, quiet_progress_bars, random_config  # noqa: E402  (a sibling script, not a package)

logger = logging.getLogger("end_to_end")

# The original README generates ViT-B images with `--temp 6.0 --num_iter 20`.
VITB_STEPS = 20
CHOICE_TEMPERATURE = 6.0
# The default model's rows use the pipeline's and the CLI's default step count.
DEFAULT_MODEL_STEPS = 12
DEFAULT_MODEL_BATCHES = (1, 16, 64)
CLI_NUM_IMAGES = 16

# The targets (issue 14): ratios against the original-loop baseline, seconds of wall time, accuracy.
TARGET_BF16_SPEEDUP = 3.5
TARGET_FP32_SPEEDUP = 1.15
TARGET_CLI_GENERATE_S = 2.5
TARGET_CLI_HELP_S = 0.5
TARGET_TOKEN_AGREEMENT = 0.99
TARGET_PSNR_DB = 40.0


# ----------------------------------------------------------------------------- the original-loop baseline
def original_loop_generate(transformer, vqvae, batch_size: int, num_iter: int, choice_temperature: float,
                           seed: int, on_step=None) -> tuple[torch.Tensor, torch.LongTensor]:
    """The original `gen_image` loop (gen_img_uncond.py of github.com/LTH14/mage), re-implemented on our modules.

    The original does not run on torch 2.13 with its pinned timm, so this is our own code doing the same
    operations per step, in the same order and dtypes:
    1. token ids (B, N) are kept as floats; each step clones them to long, prepends a zero column, writes the fake
       class into it and casts to long again;
    2. the full encoder + decoder + MLM forward over all 1 + N positions (nothing dropped), with the original's
       attention maths (`transformer` must be loaded with `attn_implementation="eager"`: float32 scores,
       scaled after the product, max-subtracted softmax), and the logits over the whole vocabulary, of which
       positions 1.. and the codebook columns are kept;
    3. `torch.distributions.Categorical(logits=...).sample()` from the global torch RNG (`torch.manual_seed(seed)`
       as the original);
    4. a second softmax, the probability of each sampled id, float64 `where` with +inf for known tokens, cast back
       to float32; the masked count floor(N * cos(pi/2 * ratio)) as a one-element tensor, clamped to
       [1, unknown - 1] with tensor `maximum`/`minimum` (the first row's count for the whole batch);
    5. Gumbel noise drawn by numpy on the host (`gumbel(size=(B, N))`, seeded with `seed`) and copied into a float32
       tensor, confidence = log p + temperature * (1 - ratio) * noise, a full sort, the cut-off read with a
       tensor-valued slice (a host sync), and `where` to re-mask;
    6. after the last step the sampled grid (not the re-masked one) goes through the float32 VQ decoder
       (`decode_tokens` with the fast decode off: codebook lookup, (B, h, w, D) -> (B, D, h, w), decoder).

    Representative because the work per step is the original's: the same transformer FLOPs in the same attention
    maths, the same vocabulary-wide logits, the same sampling and sorting, host round trips where the original
    makes them, and the exact float32 decode. The differences are small against a 0.4 s step: our forward checks
    its input ids (one min/max) and fills the decoder's masked positions with `torch.where` where the original
    first scatters every kept position through a `nonzero()` index (nothing is dropped at generation time).

    Returns (images (B, 3, H, W) raw decoder output, token ids (B, N)). `on_step(step, token_ids)` sees the
    re-masked (B, N) grid after each step.
    """
    config = transformer.config
    device = transformer.device
    num_tokens, codebook_size, mask_id = config.num_tokens, config.codebook_size, config.mask_token_id
    torch.manual_seed(seed)
    host_rng = np.random.RandomState(seed)
    token_indices = mask_id * torch.ones(batch_size, num_tokens, device=device)
    with torch.no_grad():
        for step in range(num_iter):
            cur_ids = token_indices.clone().long()
            token_indices = torch.cat([torch.zeros(batch_size, 1, device=device), token_indices], dim=1)
            token_indices[:, 0] = config.fake_class_label
            token_indices = token_indices.long()
            logits = transformer(input_ids=token_indices).logits[:, 1:, :codebook_size]

            sampled_ids = torch.distributions.Categorical(logits=logits).sample()
            unknown_map = cur_ids == mask_id
            sampled_ids = torch.where(unknown_map, sampled_ids, cur_ids)

            ratio = (step + 1) / num_iter
            mask_ratio = np.cos(math.pi / 2.0 * ratio)
            probs = torch.softmax(logits, dim=-1)
            selected_probs = torch.gather(probs, -1, sampled_ids.unsqueeze(-1)).squeeze(-1)
            selected_probs = torch.where(unknown_map, selected_probs.double(), math.inf).float()
            mask_len = torch.tensor([np.floor(num_tokens * mask_ratio)], device=device)
            mask_len = torch.maximum(torch.tensor([1.0], device=device),
                                     torch.minimum(unknown_map.sum(dim=-1, keepdim=True) - 1, mask_len))

            length = mask_len[0].squeeze().long()
            noise = torch.tensor(choice_temperature * (1 - ratio) * host_rng.gumbel(size=tuple(selected_probs.shape)),
                                 dtype=torch.float32).to(device)
            confidence = torch.log(selected_probs) + noise
            sorted_confidence = torch.sort(confidence, dim=-1).values
            cut_off = sorted_confidence[:, length - 1:length]
            masking = confidence <= cut_off
            token_indices = torch.where(masking, mask_id, sampled_ids)
            if on_step is not None:
                on_step(step, token_indices)

        grid = config.token_grid_size
        images = vqvae.decode_tokens(sampled_ids, grid_size=(grid, grid))
    return images, sampled_ids


# ----------------------------------------------------------------------------- models
def save_random_pipeline(name: str, folder: Path) -> Path:
    """A `MagePipeline` folder with random weights at the shapes of `name` (`vitb` or `tiny`), saved as a user's
    folder would be, so every variant loads it through the public `from_pretrained`."""
    from mage_hf import MageForMaskedImageModeling, MagePipeline, MageScheduler, MageVQModel

    torch.manual_seed(0)
    config = random_config(name)
    transformer = MageForMaskedImageModeling(config).eval()
    vqvae = MageVQModel(**config.vqvae_config).eval()
    scheduler = MageScheduler(mask_token_id=config.mask_token_id, choice_temperature=CHOICE_TEMPERATURE)
    MagePipeline(vqvae=vqvae, transformer=transformer, scheduler=scheduler).save_pretrained(folder)
    return folder


def load_variants(folder: Path) -> dict:
    """The three ways of generating: `fp32` and `bf16` pipelines, and the original-loop baseline's modules (an
    eager-attention float32 transformer and a float32 VQ model with the exact decoder)."""
    from mage_hf import MageForMaskedImageModeling, MagePipeline, MageVQModel

    fp32 = MagePipeline.from_pretrained(folder)
    bf16 = MagePipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    for pipe in (fp32, bf16):
        pipe.set_progress_bar_config(disable=True)
    transformer = MageForMaskedImageModeling.from_pretrained(folder, subfolder="transformer",
                                                             attn_implementation="eager").eval()
    attention = getattr(transformer.config, "_attn_implementation", None)
    if attention != "eager":
        raise RuntimeError(f"the original-loop baseline needs eager attention, the model reports {attention!r}")
    vqvae = MageVQModel.from_pretrained(folder, subfolder="vqvae").eval()
    if hasattr(vqvae, "disable_fast_decode"):
        vqvae.disable_fast_decode()
    return dict(fp32=fp32, bf16=bf16, original=(transformer, vqvae))


# ----------------------------------------------------------------------------- timed work
def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (user + system). With one thread it does not grow
    while the process waits for a core, so on a busy machine it is the steadier measure of the work itself."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Timed:
    """One timed variant: `run()` does the work once; `seconds` (wall) and `cpu` (CPU time, `cpu_seconds`)
    collect one value per round."""

    key: str
    run: object
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    error: str | None = None

    def once(self) -> None:
        if self.error is not None:
            return
        start, cpu_start = time.perf_counter(), cpu_seconds()
        try:
            self.run()
        except Exception as error:  # a broken variant is reported in its row; the others still run
            self.error = f"{type(error).__name__}: {error}"
            logger.error("%s failed: %s", self.key, self.error)
            return
        self.seconds.append(time.perf_counter() - start)
        self.cpu.append(cpu_seconds() - cpu_start)
        logger.info("%-22s %.3f s wall, %.3f s CPU", self.key, self.seconds[-1], self.cpu[-1])

    def clear(self) -> None:
        self.seconds.clear()
        self.cpu.clear()


def _generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def generation_work(variants: dict, steps: int) -> list[Timed]:
    transformer, vqvae = variants["original"]

    def pipeline_call(pipe):
        return lambda: pipe(batch_size=1, num_inference_steps=steps, generator=_generators(1), output_type="pt")

    return [
        Timed("gen/original", lambda: original_loop_generate(transformer, vqvae, 1, steps, CHOICE_TEMPERATURE, 0)),
        Timed("gen/fp32", pipeline_call(variants["fp32"])),
        Timed("gen/bf16", pipeline_call(variants["bf16"])),
    ]


def default_model_work(batches, steps: int) -> list[Timed]:
    from mage_hf import DEFAULT_MODEL_PATH, MagePipeline

    pipe = MagePipeline.from_pretrained(DEFAULT_MODEL_PATH)
    pipe.set_progress_bar_config(disable=True)

    def call(batch):  # as `mage-hf generate` calls it: one generator per image, PIL images out
        return lambda: pipe(batch_size=batch, num_inference_steps=steps, generator=_generators(batch))

    return [Timed(f"default/{batch}", call(batch)) for batch in batches]


def cli_command() -> list[str]:
    """The installed `mage-hf` console script of this interpreter's environment (else `python -m mage_hf.cli`)."""
    script = shutil.which("mage-hf", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "mage_hf.cli"]


def cli_work(out_dir: Path, num_images: int, steps: int | None, threads: int | None = None) -> list[Timed]:
    """`mage-hf generate` and `mage-hf --help` as subprocesses; `threads` sets their torch threads (OMP_NUM_THREADS),
    so they run with the thread count of the in-process rows."""
    command = cli_command()
    counter = iter(range(10**6))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)

    def run(args):
        completed = subprocess.run(command + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"exit code {completed.returncode}: {completed.stderr.strip().splitlines()[-1:]}")

    def generate():  # a new file each time: `mage-hf` refuses to overwrite
        extra = ["--steps", str(steps)] if steps is not None else []
        run(["generate", "--num-images", str(num_images), *extra, "--out", str(out_dir / f"cli_{next(counter)}.png")])

    return [Timed("cli/generate", generate), Timed("cli/help", lambda: run(["--help"]))]


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def run_rounds(work: list[Timed], rounds: int, warmup: bool = True) -> list[float]:
    """Every variant once per round, after a warm-up round (not recorded), the order rotated each round. Returns
    the 1-minute load average after each round."""
    if warmup:
        for item in work:
            item.once()
            item.clear()
    loads = []
    for index in range(rounds):
        shift = index % len(work)
        for item in work[shift:] + work[:shift]:
            item.once()
        loads.append(load_average())
    return loads


# ----------------------------------------------------------------------------- accuracy at ViT-B shapes
def bf16_accuracy(variants: dict, steps: int) -> dict:
    """First-step (all-masked grid) argmax agreement bf16 vs float32, the same on a half-masked grid, and the PSNR
    of the bf16 call's pixels against the exact float32 decode of the tokens that same call produced."""
    fp32, bf16 = variants["fp32"], variants["bf16"]
    _, exact_vqvae = variants["original"]
    config = fp32.transformer.config
    codebook_size = config.codebook_size
    generator = torch.Generator().manual_seed(1)
    half = torch.randint(0, codebook_size, (4, config.num_tokens), generator=generator)
    half = torch.where(torch.rand(half.shape, generator=generator) < 0.5, config.mask_token_id, half)
    grids = {"first_step": torch.full((1, config.num_tokens), config.mask_token_id), "half_masked": half}
    result = {}
    with torch.no_grad():
        for name, grid in grids.items():
            ids = fp32.transformer.mage.build_input_ids(grid)
            reference = fp32.transformer(input_ids=ids).logits[:, 1:, :codebook_size].argmax(-1)
            fast = bf16.transformer(input_ids=ids.to(bf16.device)).logits[:, 1:, :codebook_size].argmax(-1)
            result[f"{name}_agreement"] = (fast.cpu() == reference.cpu()).float().mean().item()

    final = {}

    def keep_final(pipe, step, timestep, kwargs):
        if step == steps - 1:
            final["latents"] = kwargs["latents"].clone()
        return {}

    images = bf16(batch_size=1, num_inference_steps=steps, generator=_generators(1), output_type="pt",
                  callback_on_step_end=keep_final).images
    with torch.no_grad():
        exact = exact_vqvae.decode_tokens(final["latents"].to(exact_vqvae.device)).float().clamp(0, 1)
    result["bf16_decode_psnr"] = psnr(images.float().cpu(), exact.cpu())
    fast_decode = getattr(bf16.vqvae, "fast_decode_dtype", None)
    result["bf16_decode_path"] = (f"fast decode ({str(fast_decode).replace('torch.', '')})" if fast_decode is not None
                                  else f"vqvae {str(bf16.vqvae.dtype).replace('torch.', '')}")
    return result


# ----------------------------------------------------------------------------- the table
def _status_at_least(value: float, target: float) -> str:
    return "met" if value >= target else f"missed ({value / target:.1%} of target)"


def _status_at_most(value: float, target: float) -> str:
    return "met" if value <= target else f"missed by {value - target:.2f} s"


def build_rows(work: dict[str, Timed], accuracy: dict | None, shapes: str, steps: int, default_steps: int,
               cli_images: int) -> list[dict]:
    """Table rows: measure, variant, batch, min s, median s, img/s, result, target, status."""
    rows = []

    def timed_row(key, measure, variant, batch, result="", target="", status="", status_of=None):
        """`status_of(min seconds)` gives the status of rows whose target is a time."""
        item = work.get(key)
        if item is None:
            return None
        if item.error is not None:
            rows.append(dict(measure=measure, variant=variant, batch=batch, result=f"error: {item.error[:120]}",
                             target=target, status="error"))
            return None
        low, median = min(item.seconds), statistics.median(item.seconds)
        rows.append(dict(measure=measure, variant=variant, batch=batch, min_s=low, median_s=median,
                         min_cpu_s=min(item.cpu) if item.cpu else None, img_s=batch / low if batch else None,
                         result=result, target=target, status=status_of(low) if status_of else status))
        return rows[-1]

    def speedup(key):
        base, other = work.get("gen/original"), work.get(key)
        if not (base and other and base.seconds and other.seconds):
            return None
        per_round = statistics.median(b / o for b, o in zip(base.seconds, other.seconds))
        cpu = min(base.cpu) / min(other.cpu) if base.cpu and other.cpu else None
        return min(base.seconds) / min(other.seconds), per_round, cpu

    generation = f"{shapes}, {steps}-step generation"
    timed_row("gen/original", generation, "original-loop baseline, fp32 (eager attention, fp32 decode)", 1,
              result="1.00x (reference)")
    for key, variant, target in (("gen/fp32", "`MagePipeline` fp32", TARGET_FP32_SPEEDUP),
                                 ("gen/bf16", "`MagePipeline` `torch_dtype=torch.bfloat16`", TARGET_BF16_SPEEDUP)):
        ratio = speedup(key)
        if ratio is None:
            timed_row(key, generation, variant, 1, target=f">= {target}x the original")
        else:
            cpu = "" if ratio[2] is None else f"; CPU time {ratio[2]:.2f}x"
            result = f"{ratio[0]:.2f}x the original (per round {ratio[1]:.2f}x{cpu})"
            timed_row(key, generation, variant, 1, result=result,
                      target=f">= {target}x the original", status=_status_at_least(ratio[0], target))
    if accuracy is not None:
        for name, grid in (("first_step", "all-masked grid (first step)"), ("half_masked", "half-masked grid")):
            value = accuracy[f"{name}_agreement"]
            first = name == "first_step"
            rows.append(dict(measure=f"{shapes}, bf16 vs fp32 token agreement", variant=grid, batch=None,
                             result=f"{value:.2%}", target=f">= {TARGET_TOKEN_AGREEMENT:.0%}" if first else "(info)",
                             status=_status_at_least(value, TARGET_TOKEN_AGREEMENT) if first else ""))
        rows.append(dict(measure=f"{shapes}, bf16 call's pixels vs fp32 decode of its tokens", batch=None,
                         variant=accuracy["bf16_decode_path"], result=f"{accuracy['bf16_decode_psnr']:.1f} dB PSNR",
                         target=f">= {TARGET_PSNR_DB:.0f} dB",
                         status=_status_at_least(accuracy["bf16_decode_psnr"], TARGET_PSNR_DB)))
    for key in sorted((k for k in work if k.startswith("default/")), key=lambda k: int(k.split("/")[1])):
        batch = int(key.split("/")[1])
        timed_row(key, f"default model, `pipe(...)` call, {default_steps} steps", "fp32, PIL out", batch)
    timed_row("cli/generate", f"`mage-hf generate --num-images {cli_images} --out FILE` (default model), wall",
              "subprocess", cli_images, target=f"<= {TARGET_CLI_GENERATE_S} s",
              status_of=lambda seconds: _status_at_most(seconds, TARGET_CLI_GENERATE_S))
    timed_row("cli/help", "`mage-hf --help`, wall", "subprocess", None, target=f"<= {TARGET_CLI_HELP_S} s",
              status_of=lambda seconds: _status_at_most(seconds, TARGET_CLI_HELP_S))
    return rows


def format_table(rows: list[dict]) -> list[str]:
    lines = ["| measure | variant | batch | min s | median s | min CPU s | img/s | result | target | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row["measure"], row["variant"], "" if row.get("batch") is None else str(row["batch"]),
                 f"{row['min_s']:.2f}" if "min_s" in row else "", f"{row['median_s']:.2f}" if "median_s" in row else "",
                 f"{row['min_cpu_s']:.2f}" if row.get("min_cpu_s") is not None else "",
                 f"{row['img_s']:.2f}" if row.get("img_s") else "", row["result"], row["target"], row["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds after one warm-up round (3; quick: 1)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads, in this process and (OMP_NUM_THREADS) in the command-line rows")
    parser.add_argument("--quick", action="store_true",
                        help="tiny random model instead of ViT-B, 2 steps, batches 1 and 2, one round, no warm-up "
                        "(a smoke run)")
    parser.add_argument("--skip-cli", action="store_true", help="leave out the command-line rows")
    parser.add_argument("--skip-default-model", action="store_true", help="leave out the default model's rows")
    parser.add_argument("--json", help="also write the rows and raw per-round seconds to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_progress_bars()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = load_average()
    model = "tiny" if args.quick else "vitb"
    steps = 2 if args.quick else VITB_STEPS
    default_steps = 2 if args.quick else DEFAULT_MODEL_STEPS
    default_batches = (1, 2) if args.quick else DEFAULT_MODEL_BATCHES
    cli_images = 2 if args.quick else CLI_NUM_IMAGES

    from mage_hf import DEFAULT_MODEL_PATH

    notes = []
    has_default = os.path.isfile(os.path.join(DEFAULT_MODEL_PATH, "model_index.json"))
    if not has_default and not args.skip_default_model:
        notes.append(f"the default model is missing ({DEFAULT_MODEL_PATH}): its rows and the CLI rows are left out")
    with tempfile.TemporaryDirectory(prefix="mage_e2e_") as tmp:
        tmp = Path(tmp)
        logger.info("saving a random %s pipeline to %s", model, tmp / model)
        variants = load_variants(save_random_pipeline(model, tmp / model))
        work = generation_work(variants, steps)
        if has_default and not args.skip_default_model:
            work += default_model_work(default_batches, default_steps)
        if has_default and not args.skip_cli:
            work += cli_work(tmp, cli_images, steps=default_steps if args.quick else None, threads=args.threads)
        loads = [load_start, *run_rounds(work, args.rounds, warmup=not args.quick)]
        logger.info("accuracy of the bf16 call")
        accuracy = bf16_accuracy(variants, steps)

    shapes = "ViT-B/256 (random weights)" if model == "vitb" else "tiny (random weights)"
    work_by_key = {item.key: item for item in work}
    rows = build_rows(work_by_key, accuracy, shapes, steps, default_steps, cli_images)
    header = (f"mage-hf end to end  {datetime.date.today()}  {cpu_name()}  "
              f"{os.cpu_count()} CPUs  threads={args.threads}  torch {torch.__version__}  rounds={args.rounds} "
              f"{'' if args.quick else '(+1 warm-up)  '}"
              f"load average {min(loads):.1f}-{max(loads):.1f} (start, each round)"
              + ("  [quick: tiny shapes, the targets are for the full run]" if args.quick else ""))
    busiest = max(loads)
    if busiest > (os.cpu_count() or 1) - args.threads + 0.5:
        notes.append(f"the machine was busy (load average up to {busiest:.1f} on {os.cpu_count()} CPUs): absolute "
                     "times are inflated (with more torch threads than free cores, every parallel op also waits for a "
                     "descheduled thread); compare the rows of this run with each other, or rerun on a quiet machine")
    notes.append("wall time min / median over the rounds; ratios are min over min, `per round` the median of the "
                 "per-round ratios; `CPU s` is the process's (or the subprocess's) CPU time, which with one thread "
                 "does not count time spent waiting for a core; with more threads it includes their spin-waits; "
                 f"total {time.perf_counter() - started:.0f} s")
    print("\n".join([header, "", *format_table(rows), "", *(f"- {note}" for note in notes)]))
    if args.json:
        raw = {item.key: dict(seconds=item.seconds, cpu_seconds=item.cpu, error=item.error) for item in work}
        with open(args.json, "w") as handle:
            json.dump(dict(header=header, rows=rows, raw=raw, accuracy=accuracy, notes=notes), handle, indent=1)
    return 1 if any(item.error for item in work) else 0


if __name__ == "__main__":
    sys.exit(main())
