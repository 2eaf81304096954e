"""The prepared device check: one command (<= 8 minutes on a CUDA device) that prints one table.

    benchmarks/gpu_check.sh                                # on a CUDA machine, the project's venv active
    benchmarks/gpu_check.sh --json gpu.json
    benchmarks/gpu_check.sh --quick --device cpu           # tiny shapes, seconds: the smoke run of the test suite

Sections (each row: result, target, status, peak memory):
1. `peak`: the device's bf16 (and fp32) matmul rate, measured; the sampling rows are read against the bf16 one.
2. `parity`: the converted original fixture (tests/fixtures/original_tiny, `convert_checkpoint`) in float32 on
   the device against the same on CPU: logits, argmax ids, VQ token ids (also with cuDNN TF32 off), a 12-step
   generation from the same CPU generators; bf16 and fp16 first-step agreement on the fixture.
3. `variants`: one sampling step (the transformer on a half-masked grid) at ViT-B/256 shapes (random weights) in
   fp32 eager (the original's maths, the reference), fp32 SDPA, bf16 eager / SDPA / compiled, fp16 SDPA: ms per
   step, relative logit error, first-step and half-masked argmax agreement with the reference.
4. `sampling`: images/s of a whole 20-step `MagePipeline` call (bf16 from `from_pretrained(torch_dtype=...)`,
   one device generator, tensors out) at batch 64 / 128 / 256, fp32 at 64, compiled bf16 at 64, and bf16 with
   per-image CPU generators (as `mage-hf generate` passes them) at 64; FLOP/s and % of the bf16 peak.
5. `training`: forward + backward + fused AdamW step of `MageForMaskedImageModeling` at ViT-B shapes under bf16
   autocast, tokenizing pixels on the fly and on pre-tokenized ids: steps/s, images/s, peak memory.

A time budget (`--budget-s`, 420 s) skips what is left, with a note, rather than overrun; `gpu_check.sh` adds a
hard stop at 480 s that still prints the rows measured so far.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (FIXTURE_DIR, cpu_name, matmul_rate, quiet_progress_bars, random_config,  # noqa: E402
                   transformer_flops, vq_conv_flops)
from end_to_end import save_random_pipeline  # noqa: E402

logger = logging.getLogger("gpu_check")

TARGET_PEAK_FRACTION = 0.40  # ViT-B sampling in bf16 at batch >= 64 (issue 14)
TARGET_PARITY_REL = 1e-4  # the project's float32 tolerance against the original
TARGET_AGREEMENT = 0.99


@dataclass
class Settings:
    """Sizes of one run: the full check on a device, or the quick smoke run (tiny model, few steps)."""

    model: str = "vitb"
    steps: int = 20
    step_batch: int = 64
    sample_batches: tuple[int, ...] = (64, 128, 256)
    train_batch: int = 64
    train_steps: int = 5
    matmul_size: int = 8192
    compile_backend: str = "inductor"

    @classmethod
    def quick(cls, compile_backend: str | None) -> "Settings":
        # The eager backend runs dynamo's tracing without generating kernels: the compile path is exercised in
        # seconds (inductor on CPU compiles C++ for minutes).
        return cls(model="tiny", steps=2, step_batch=2, sample_batches=(1, 2), train_batch=2, train_steps=2,
                   matmul_size=256, compile_backend=compile_backend or "eager")


@dataclass
class Report:
    """The rows of the one table, and the clock of the time budget."""

    device: torch.device
    deadline: float
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, check: str, variant: str = "", batch: int | None = None, result: str = "",
            target: str = "", status: str = "", peak_mb: float | None = None) -> None:
        row = dict(section=section, check=check, variant=variant, batch=batch, result=result, target=target,
                   status=status, peak_mb=peak_mb)
        self.rows.append(row)
        logger.info("%s", row)

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline


# ----------------------------------------------------------------------------- measuring helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    """`torch.cuda.max_memory_allocated` since the last `reset_peak` (None on CPU: no per-row figure there)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def best_seconds(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.float().cpu(), reference.float().cpu()
    return ((value - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def agreement(value: torch.Tensor, reference: torch.Tensor) -> float:
    return (value.cpu() == reference.cpu()).float().mean().item()


def flop_rate(flops_per_second: float) -> str:
    if flops_per_second >= 1e12:
        return f"{flops_per_second / 1e12:.1f} TFLOP/s"
    return f"{flops_per_second / 1e9:.1f} GFLOP/s"


def status_at_least(value: float, target: float) -> str:
    return "met" if value >= target else f"missed ({value / target:.1%} of target)"


def status_at_most(value: float, target: float) -> str:
    return "met" if value <= target else f"missed ({value / target:.1f}x the bound)"


def masked_grid(config, batch: int, fraction: float, seed: int) -> torch.LongTensor:
    """(batch, 1 + N) ids: the fake class, then random codebook ids with `fraction` set to `mask_token_id`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.codebook_size, (batch, config.num_tokens), generator=generator)
    ids = torch.where(torch.rand(ids.shape, generator=generator) < fraction, config.mask_token_id, ids)
    return torch.cat([torch.full((batch, 1), config.fake_class_label), ids], dim=1)


def image_logits(model, ids: torch.LongTensor) -> torch.Tensor:
    """(B, N, codebook) float32 logits of the image positions."""
    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits[:, 1:, : model.config.codebook_size].float()


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 1. peak matmul rate
def check_peak(report: Report, settings: Settings) -> dict:
    device = report.device
    rates = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        repeats = 20 if device.type == "cuda" else 3
        rates[name] = matmul_rate(dtype, str(device), size=settings.matmul_size, repeats=repeats)
        report.add("peak", f"{settings.matmul_size}^2 matmul rate", name, result=flop_rate(rates[name]),
                   target="(reference for % of peak)" if name == "bf16" else "(info)")
    return rates


# ----------------------------------------------------------------------------- 2. parity on the converted fixture
def check_parity(report: Report, settings: Settings, tmp: Path) -> None:
    from safetensors.torch import load_file

    from mage_hf import MagePipeline
    from mage_hf.convert_original import convert_checkpoint

    device = report.device
    folder = convert_checkpoint(FIXTURE_DIR / "original_mage.pth", tmp / "fixture",
                                original_config=FIXTURE_DIR / "config.json")
    reference = load_file(FIXTURE_DIR / "reference.safetensors")
    cpu = MagePipeline.from_pretrained(folder)
    dev = MagePipeline.from_pretrained(folder).to(device)
    for pipe in (cpu, dev):
        pipe.set_progress_bar_config(disable=True)
    config = cpu.transformer.config
    ids = reference["gen_input_ids"]
    cpu_logits, dev_logits = image_logits(cpu.transformer, ids), image_logits(dev.transformer, ids)
    original = reference["gen_logits"][:, 1:, : config.codebook_size]
    rel = relative_error(dev_logits, cpu_logits)
    report.add("parity", "fixture fp32 logits, device vs CPU", "rel. error", 2, f"{rel:.1e}",
               f"<= {TARGET_PARITY_REL:.0e}", status_at_most(rel, TARGET_PARITY_REL))
    rel = relative_error(dev_logits, original)
    report.add("parity", "fixture fp32 logits, device vs the original's", "rel. error", 2, f"{rel:.1e}",
               f"<= {TARGET_PARITY_REL:.0e}", status_at_most(rel, TARGET_PARITY_REL))
    value = agreement(dev_logits.argmax(-1), cpu_logits.argmax(-1))
    report.add("parity", "fixture fp32 argmax ids, device vs CPU", "agreement", 2, f"{value:.2%}", "100%",
               status_at_least(value, 1.0))

    images = reference["images"]
    expected = reference["vq_indices"]
    tf32 = torch.backends.cudnn.allow_tf32
    # On CUDA: the default, then with TF32 convolutions off (if the default has them on).
    for allow in dict.fromkeys((tf32, False)) if device.type == "cuda" else (None,):
        torch.backends.cudnn.allow_tf32 = tf32 if allow is None else allow
        try:
            with torch.no_grad():
                tokens = dev.transformer.mage.tokenize(images.to(device))
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        value = agreement(tokens, expected)
        variant = "" if allow is None else f"cuDNN TF32 {'on' if allow else 'off'}"
        report.add("parity", "fixture VQ token ids, device vs the original's", variant, 2, f"{value:.2%}", "100%",
                   status_at_least(value, 1.0))

    def generate(pipe):
        generators = [torch.Generator().manual_seed(seed) for seed in range(2)]
        return pipe(batch_size=2, num_inference_steps=12, generator=generators, output_type="latent").images

    value = agreement(generate(dev), generate(cpu))
    report.add("parity", "fixture 12-step generation, same CPU generators", "token agreement, device vs CPU", 2,
               f"{value:.2%}", "(info: a flipped near-tie changes the rest)")
    first_step = masked_grid(config, 2, 1.0, 0)
    fp32_ids = image_logits(dev.transformer, first_step).argmax(-1)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        low = copy.deepcopy(dev.transformer).to(dtype)
        value = agreement(image_logits(low, first_step).argmax(-1), fp32_ids)
        report.add("parity", "fixture first-step argmax agreement with fp32", name, 2, f"{value:.2%}",
                   f">= {TARGET_AGREEMENT:.0%}", status_at_least(value, TARGET_AGREEMENT))
        del low


# ----------------------------------------------------------------------------- 3. precision and attention variants
VARIANTS = (  # (name, dtype, attention, compiled); the first is the reference
    ("fp32 eager", torch.float32, "eager", False),
    ("fp32 SDPA", torch.float32, "sdpa", False),
    ("bf16 eager", torch.bfloat16, "eager", False),
    ("bf16 SDPA", torch.bfloat16, "sdpa", False),
    ("bf16 SDPA compiled", torch.bfloat16, "sdpa", True),
    ("fp16 SDPA", torch.float16, "sdpa", False),
)


def check_variants(report: Report, settings: Settings, folder: Path) -> None:
    from mage_hf import MageForMaskedImageModeling

    device = report.device
    batch = settings.step_batch
    reference = None
    for name, dtype, attention, compiled in VARIANTS:
        if report.out_of_time():
            report.add("variants", "sampling step", name, batch, "skipped: time budget")
            continue
        model = MageForMaskedImageModeling.from_pretrained(folder, subfolder="transformer", dtype=dtype,
                                                           attn_implementation=attention).to(device).eval()
        config = model.config
        half, first = masked_grid(config, batch, 0.5, 1), masked_grid(config, batch, 1.0, 0)
        note = ""
        if compiled:
            model.compile(backend=settings.compile_backend)
            start = time.perf_counter()
            image_logits(model, half)
            sync(device)
            note = f"; first call (compiling, {settings.compile_backend}) {time.perf_counter() - start:.0f} s"
        half_logits, first_logits = image_logits(model, half), image_logits(model, first)
        reset_peak(device)
        with torch.no_grad():
            seconds = best_seconds(lambda: model(input_ids=half.to(device)), device,
                                   repeats=5 if device.type == "cuda" else 2)
        peak = peak_mb(device)
        flops = transformer_flops(config, batch, 1 + config.num_tokens)
        if reference is None:
            reference = (half_logits, first_logits)
            result = f"{seconds * 1e3:.1f} ms/step, {flop_rate(flops / seconds)} (reference)"
            report.add("variants", "sampling step (half-masked grid)", name, batch, result, "(reference)", "", peak)
        else:
            rel = relative_error(half_logits, reference[0])
            first_agree = agreement(first_logits.argmax(-1), reference[1].argmax(-1))
            half_agree = agreement(half_logits.argmax(-1), reference[0].argmax(-1))
            result = (f"{seconds * 1e3:.1f} ms/step, {flop_rate(flops / seconds)}; logits rel. error {rel:.1e}; "
                      f"argmax agreement first step {first_agree:.2%}, half-masked {half_agree:.2%}{note}")
            if dtype == torch.float32:
                target, status = f"rel. error <= {TARGET_PARITY_REL:.0e}", status_at_most(rel, TARGET_PARITY_REL)
            else:
                target, status = f"first step >= {TARGET_AGREEMENT:.0%}", status_at_least(first_agree, TARGET_AGREEMENT)
            report.add("variants", "sampling step (half-masked grid)", name, batch, result, target, status, peak)
        del model
        free(device)


# ----------------------------------------------------------------------------- 4. 20-step sampling throughput
def _sampling_flops(config, vq_decoder_flops: float, batch: int, steps: int) -> float:
    return steps * transformer_flops(config, batch, 1 + config.num_tokens) + batch * vq_decoder_flops


def check_sampling(report: Report, settings: Settings, folder: Path, bf16_peak: float) -> None:
    from mage_hf import MagePipeline, MageVQModel

    device = report.device
    steps = settings.steps
    exact_vq = MageVQModel.from_pretrained(folder, subfolder="vqvae").to(device)
    bf16 = MagePipeline.from_pretrained(folder, torch_dtype=torch.bfloat16).to(device)
    config = bf16.transformer.config
    vq_flops = vq_conv_flops(exact_vq, config.image_size, config.image_size, "decoder")
    del exact_vq

    def device_generator():
        return torch.Generator(device).manual_seed(0)

    def cpu_generators(batch):
        return [torch.Generator().manual_seed(seed) for seed in range(batch)]

    def measure(pipe, variant, batch, generator_of, targeted):
        if report.out_of_time():
            report.add("sampling", f"{steps}-step generation, whole call", variant, batch, "skipped: time budget")
            return
        pipe.set_progress_bar_config(disable=True)

        def call():
            pipe(batch_size=batch, num_inference_steps=steps, generator=generator_of(batch), output_type="pt")

        try:
            call()  # warm-up (and compilation) at this batch size
            reset_peak(device)
            seconds = best_seconds(call, device, repeats=2 if device.type == "cuda" else 1, warmup=0)
        except Exception as error:  # e.g. out of memory at the largest batch: the other rows still run
            report.add("sampling", f"{steps}-step generation, whole call", variant, batch,
                       f"error: {type(error).__name__}: {str(error)[:160]}", status="error")
            free(device)
            return
        peak = peak_mb(device)
        rate = _sampling_flops(config, vq_flops, batch, steps) / seconds
        fraction = rate / bf16_peak
        result = f"{batch / seconds:.1f} img/s ({seconds:.2f} s/call), {flop_rate(rate)} = {fraction:.0%} of bf16 peak"
        target = f">= {TARGET_PEAK_FRACTION:.0%} of peak" if targeted else "(info)"
        status = status_at_least(fraction, TARGET_PEAK_FRACTION) if targeted else ""
        report.add("sampling", f"{steps}-step generation, whole call", variant, batch, result, target, status, peak)

    first_batch = settings.sample_batches[0]
    for batch in settings.sample_batches:
        measure(bf16, "bf16, device generator", batch, lambda b: device_generator(), targeted=True)
    measure(bf16, "bf16, one CPU generator per image (as the CLI)", first_batch, cpu_generators, targeted=False)
    del bf16
    free(device)
    fp32 = MagePipeline.from_pretrained(folder).to(device)
    measure(fp32, "fp32, device generator", first_batch, lambda b: device_generator(), targeted=False)
    del fp32
    free(device)
    compiled = MagePipeline.from_pretrained(folder, torch_dtype=torch.bfloat16).to(device)
    compiled.transformer.compile(backend=settings.compile_backend)
    measure(compiled, f"bf16 compiled ({settings.compile_backend}), device generator", first_batch,
            lambda b: device_generator(), targeted=False)
    del compiled
    free(device)


# ----------------------------------------------------------------------------- 5. training steps/s
def check_training(report: Report, settings: Settings, bf16_peak: float) -> None:
    from mage_hf import MageForMaskedImageModeling, MageVQModel

    device = report.device
    batch = settings.train_batch
    torch.manual_seed(0)
    config = random_config(settings.model)
    model = MageForMaskedImageModeling(config).to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)
    pixels = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    with torch.no_grad():
        token_ids = model.mage.tokenize(pixels)
    kept = 1 + config.num_tokens - int(config.num_tokens * config.mask_ratio_min + 0.999999)
    counter = MageVQModel(**config.vqvae_config).to(device)  # the tokenizer's shapes, for counting its FLOPs
    encoder_flops = batch * vq_conv_flops(counter, config.image_size, config.image_size, "encoder")
    del counter
    for path in ("pixels", "tokens"):
        if report.out_of_time():
            report.add("training", "forward + backward + AdamW, bf16 autocast", path, batch, "skipped: time budget")
            continue

        def train_step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                if path == "pixels":
                    loss = model(pixel_values=pixels).loss
                else:
                    loss = model(image_token_ids=token_ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        train_step()
        reset_peak(device)
        seconds = best_seconds(train_step, device, repeats=settings.train_steps, warmup=1)
        flops = 3 * transformer_flops(config, batch, kept) + (encoder_flops if path == "pixels" else 0)
        what = "on-the-fly tokenization" if path == "pixels" else "pre-tokenized ids"
        result = (f"{1 / seconds:.2f} steps/s, {batch / seconds:.1f} img/s, {flop_rate(flops / seconds)} "
                  f"= {flops / seconds / bf16_peak:.0%} of bf16 peak")
        report.add("training", f"forward + backward + AdamW, bf16 autocast ({what})", path, batch, result, "(info)",
                   "", peak_mb(device))


# ----------------------------------------------------------------------------- the table and main
def format_table(report: Report) -> list[str]:
    lines = ["| section | check | variant | batch | result | target | status | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report.rows:
        cells = [row["section"], row["check"], row["variant"], "" if row["batch"] is None else str(row["batch"]),
                 row["result"], row["target"], row["status"], "" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}")
    return f"CPU {cpu_name()}, {torch.get_num_threads()} threads"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="'cuda', 'cuda:1', ... or 'cpu' (with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 steps, batches 1 and 2 (seconds)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    parser.add_argument("--compile-backend", default=None, help="torch.compile backend (inductor; quick: eager)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (use --quick --device cpu for the smoke run)")
    return args


SECTIONS = ("peak", "parity", "variants", "sampling", "training")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    settings = Settings.quick(args.compile_backend) if args.quick else Settings(
        compile_backend=args.compile_backend or "inductor")
    started = time.perf_counter()
    report = Report(device=device, deadline=started + args.budget_s)
    rates = {"bf16": float("nan")}
    sections = set(args.sections)
    if sections & {"sampling", "training"}:
        sections.add("peak")  # their rows are read against the measured bf16 peak
    if sections - {"peak"}:  # (imports transformers and diffusers, which `peak` alone does not need)
        quiet_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="mage_gpu_check_") as tmp:
            tmp = Path(tmp)
            needs_folder = sections & {"variants", "sampling"}
            folder = save_random_pipeline(settings.model, tmp / settings.model) if needs_folder else None
            jobs = (
                ("peak", lambda: rates.update(check_peak(report, settings))),
                ("parity", lambda: check_parity(report, settings, tmp)),
                ("variants", lambda: check_variants(report, settings, folder)),
                ("sampling", lambda: check_sampling(report, settings, folder, rates["bf16"])),
                ("training", lambda: check_training(report, settings, rates["bf16"])),
            )
            for name, job in jobs:
                if name not in sections:
                    continue
                if report.out_of_time():
                    report.add(name, "(section)", result="skipped: time budget")
                    continue
                try:
                    job()
                except Exception as error:  # one broken section is reported; the others still run
                    logger.exception("section %s failed", name)
                    report.add(name, "(section)", result=f"error: {type(error).__name__}: {str(error)[:160]}",
                               status="error")
    except KeyboardInterrupt:  # the hard stop of gpu_check.sh: print what was measured
        report.notes.append("interrupted (time limit): the rows below are those measured so far")
    header = (f"mage-hf device check  {datetime.date.today()}  {device_description(device)}  torch {torch.__version__}"
              + ("  [quick: tiny shapes, the targets are for the full run]" if args.quick else ""))
    shapes = "ViT-B/256, random weights" if settings.model == "vitb" else "tiny, random weights"
    report.notes.append(f"shapes: {shapes}; "
                        f"total {time.perf_counter() - started:.0f} s")
    print("\n".join([header, "", *format_table(report), "", *(f"- {note}" for note in report.notes)]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(header=header, rows=report.rows, notes=report.notes, rates=rates), handle, indent=1)
    return 1 if any(row["status"] == "error" for row in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
