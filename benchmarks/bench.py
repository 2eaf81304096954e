"""Speed, memory and fast-path accuracy of mage-hf, printed as tables.

Every (model, work, variant) runs in a fresh child process (so peak memory is that row's alone; batch sizes run
in increasing order in the same child) and is compared with the FLOP limit: the analytic FLOPs of the work
divided by this machine's matmul rate in the same dtype, measured at the start with the same thread count.

    python benchmarks/bench.py --quick                  # ViT-B/256 shapes (random weights) + the default model
    python benchmarks/bench.py --models vitb --works sample-step --variants fp32 bf16-weights --batch-sizes 2 --quick
    python benchmarks/bench.py --threads 1               # on a busy machine one thread is often faster
    python benchmarks/bench.py --device cuda --batch-sizes 16 64

Works:
- `sample-step`: one transformer forward over a half-masked grid (one generation step). `gen img/s` is a
  20-step generation: 20 steps + 20 scheduler steps + one VQ decode, each measured (bf16 variants decode
  with `enable_fast_vq_decode()`, i.e. bf16 autocast + channels-last; bf16-autocast amortises the one weight
  cast per generation, as `with torch.autocast(...): pipe(...)` does).
- `embed`: `MageModel(pixel_values=...)`: VQ tokenization + encoder (the image-feature-extraction path).
- `pretrain-pixels` / `pretrain-tokens`: forward + backward + AdamW step, tokenizing on the fly or on
  pre-tokenized ids.
- `vq-decode`: the VQ decoder alone (batch 1 per image), float32 vs the opt-in fast paths, with PSNR.

Columns: `ms/iter` is one call (best of the repeats); `img/s` images per second for that call; `x limit` is
ms/iter over the time the FLOPs would take at the matmul rate measured right after the row, in the same process
and dtype (`matmul GFLOP/s`; 1.0 = at the limit); `peak MB` is the process's peak RSS (CPU) or
`max_memory_allocated` (CUDA). The paired table times fp32 and bf16 generation alternately in one process (the
ratio the bf16 target is about). The accuracy table compares bf16 with float32 on the same inputs: first-step
token agreement (all-masked grid, and a half-masked grid), embedding cosine, the SDPA-vs-eager error,
batch-size independence, VQ token ids, and the fast VQ decode's PSNR.

On a machine shared with other jobs, use `--threads 1`: with more threads than free cores every parallel op
waits for a descheduled thread (elementwise ops become ~50x slower).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import multiprocessing as mp
import os
import platform
import queue as queue_module
import resource
import time
from pathlib import Path

import torch

logger = logging.getLogger("bench")

GEN_STEPS = 20
REPO_ROOT = Path(__file__).resolve().parents[1]
# The original code's tiny random checkpoints and a Fashion-MNIST subset, both shipped with the tests.
FIXTURE_DIR = REPO_ROOT / "tests" / "fixtures" / "original_tiny"
SAMPLE_IMAGES_FILE = REPO_ROOT / "tests" / "data" / "fashion_mnist_5k.npz"

# Which variants make sense for which work (pre-training: dropout is on and bf16 weights would need a
# master copy, so only float32 and autocast; eager only changes attention, whose share is largest when sampling).
WORK_VARIANTS = {
    "sample-step": ("fp32", "eager", "bf16-autocast", "bf16-weights", "compile"),
    "embed": ("fp32", "bf16-autocast", "bf16-weights", "compile"),
    "pretrain-pixels": ("fp32", "bf16-autocast"),
    "pretrain-tokens": ("fp32", "bf16-autocast"),
    "pretrain": ("fp32", "bf16-autocast"),  # both of the above, alternating in one process
    "vq-decode": ("fp32", "channels-last", "bf16-autocast", "bf16-fast"),
}
ALL_VARIANTS = ("fp32", "eager", "bf16-autocast", "bf16-weights", "compile", "channels-last", "bf16-fast")


# ----------------------------------------------------------------------------- FLOPs
def transformer_flops(config, batch: int, encoder_tokens: int, decoder: bool = True) -> float:
    """Multiply-adds x 2 of one forward: linear layers, attention products, MLM head (decoder only)."""

    def stack(width, inner, layers, length):
        linear = 2 * length * (4 * width * width + 2 * width * inner)  # qkv + proj + MLP
        attention = 2 * 2 * length * length * width  # QK^T and AV
        return layers * (linear + attention)

    total = stack(config.hidden_size, config.intermediate_size, config.num_hidden_layers, encoder_tokens)
    if decoder:
        length = 1 + config.num_tokens
        total += 2 * encoder_tokens * config.hidden_size * config.decoder_hidden_size  # decoder embed
        total += stack(config.decoder_hidden_size, config.decoder_intermediate_size, config.decoder_num_hidden_layers, length)
        total += 2 * length * (config.decoder_hidden_size * config.hidden_size + config.hidden_size * config.vocab_size)
    return batch * total


def vq_conv_flops(vq, height: int, width: int, part: str) -> float:
    """FLOPs of the VQ encoder or decoder convolutions for one image, counted with forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        total += 2 * output.numel() * kernel

    module = getattr(vq, part)
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    device = next(module.parameters()).device
    with torch.no_grad():
        if part == "encoder":
            module(torch.zeros(1, vq.config.in_channels, height, width, device=device))
        else:
            factor = vq.downsample_factor
            module(torch.zeros(1, vq.config.latent_channels, height // factor, width // factor, device=device))
    for handle in handles:
        handle.remove()
    return float(total)


def matmul_rate(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of a square matmul (the best of three runs: the machine may be shared)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quiet_progress_bars() -> None:
    """No loading/saving progress bars from transformers and diffusers: the output is the table."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- models
def default_model_available() -> bool:
    from mage_hf import DEFAULT_MODEL_PATH

    return os.path.isfile(os.path.join(DEFAULT_MODEL_PATH, "model_index.json"))


# A MAGE small enough to run every code path in seconds (`--quick` smoke runs): 16 px images -> 8x8 tokens,
# codebook 16, 10 classes + the fake class.
TINY_CONFIG = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
    image_size=16, num_class_tokens=11, fake_class_label=16 + 10, max_position_embeddings=65,
    vqvae_config=dict(base_channels=32, channel_multipliers=[1, 2], num_res_blocks=1, latent_channels=32,
                      codebook_size=16, sample_size=16),
)


def random_config(name: str):
    """The `MageConfig` of a random-weight model: `vitb` (the published ViT-B/256 shapes) or `tiny`."""
    from mage_hf import MageConfig

    if name == "vitb":
        return MageConfig.from_preset("mage_vit_base_patch16")
    if name == "tiny":
        return MageConfig(**copy.deepcopy(TINY_CONFIG))
    raise ValueError(f"`name` must be 'vitb' or 'tiny', got {name!r}")


def build_models(name: str, device: str):
    """(vqvae, transformer) in eval mode: `vitb` (random weights at the real ViT-B/256 shapes), `tiny` (random
    weights, seconds), `default` (the shipped default model) or `fixture` (the original-code fixture checkpoint,
    converted)."""
    from mage_hf import MageForMaskedImageModeling, MagePipeline, MageVQModel

    if name in ("vitb", "tiny"):
        torch.manual_seed(0)
        config = random_config(name)
        transformer = MageForMaskedImageModeling(config)
        vqvae = MageVQModel(**config.vqvae_config)
    elif name == "fixture":
        from mage_hf.convert_original import build_pipeline, collect_weights, config_from_original, read_original_config

        config = config_from_original(read_original_config(FIXTURE_DIR / "config.json"))
        _, weights = collect_weights(FIXTURE_DIR / "original_mage.pth", None)
        pipe = build_pipeline(config, weights)
        transformer, vqvae = pipe.transformer, pipe.vqvae
    else:
        from mage_hf import DEFAULT_MODEL_PATH

        pipe = MagePipeline.from_pretrained(DEFAULT_MODEL_PATH)
        transformer, vqvae = pipe.transformer, pipe.vqvae
    return vqvae.eval().to(device), transformer.eval().to(device)


def to_bf16_weights(transformer):
    """The transformer in bfloat16 with its built-in VQ tokenizer kept in float32, in place: what
    `from_pretrained(..., dtype=torch.bfloat16)` loads (`_keep_in_fp32_modules_strict`); a bare `.to(bfloat16)`
    would cast the tokenizer too and change token ids."""
    tokenizer = getattr(getattr(transformer, "mage", transformer), "vqvae", None)
    exact = None if tokenizer is None else {k: v.clone() for k, v in tokenizer.state_dict().items()}
    transformer.to(torch.bfloat16)
    if tokenizer is not None:  # back to float32 from the saved values, not from their bf16 rounding
        tokenizer.float().load_state_dict(exact)
    return transformer


def _masked_ids(config, batch: int, device: str, fraction: float = 0.5, seed: int = 0) -> torch.LongTensor:
    """(batch, 1 + N) ids: fake class, then codebook ids with `fraction` of them set to `mask_token_id`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.codebook_size, (batch, config.num_tokens), generator=generator)
    masked = torch.rand(batch, config.num_tokens, generator=generator) < fraction
    ids = torch.where(masked, config.mask_token_id, ids)
    return torch.cat([torch.full((batch, 1), config.fake_class_label), ids], dim=1).to(device)


def _half_masked_ids(config, batch: int, device: str) -> torch.LongTensor:
    return _masked_ids(config, batch, device, 0.5)


def _time(fn, device: str, warmup: int, repeats: int) -> float:
    """Best of `repeats` timed calls after `warmup` calls: on a shared machine the minimum is the estimate least
    disturbed by other processes (the matmul rate is measured the same way)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sample_images(batch: int, size: int, device: str) -> torch.Tensor:
    """(batch, 3, size, size) in [0, 1]: real images (the Fashion-MNIST test images shipped in tests/data, grey
    repeated to RGB and resized) when the file is there and holds enough of them, else uniform noise."""
    if SAMPLE_IMAGES_FILE.is_file():
        import numpy as np

        grey = np.load(SAMPLE_IMAGES_FILE)["x_test"][:batch]
        if len(grey) == batch:
            images = torch.from_numpy(grey).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
            if images.shape[-1] != size:
                images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
            return images.clamp(0, 1).contiguous().to(device)
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(2)).to(device)


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images clipped to [0, 1] (peak 1)."""
    mse = (image.float().clamp(0, 1) - reference.float().clamp(0, 1)).pow(2).mean().item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


def _autocast(device: str, enabled: bool):
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=enabled)


# ----------------------------------------------------------------------------- one (work, variant), all batch sizes
def run_rows(spec: dict) -> list[dict]:
    """Runs in a child process: build, then time one workload in one variant at each batch size. The work
    `pretrain` times `pretrain-tokens` and `pretrain-pixels` alternately (one row each)."""
    torch.set_num_threads(spec["threads"])
    device, variant, work = spec["device"], spec["variant"], spec["work"]
    vqvae, transformer = build_models(spec["model"], device)
    if variant == "eager":
        transformer.config._attn_implementation = "eager"
    if variant == "bf16-weights":
        to_bf16_weights(transformer)
    if variant == "compile":  # in place, as `MagePipeline.enable_compile()` does
        (transformer.mage if work == "embed" else transformer).compile()
    rate_dtype = torch.bfloat16 if variant.startswith("bf16") else torch.float32
    runner = {"sample-step": _sample_step, "embed": _embed, "vq-decode": _vq_decode}.get(work, _pretrain)
    rows = []
    for batch in spec["batches"]:
        _reset_peak_memory(device)
        try:
            results = runner(spec, vqvae, transformer, batch)
        except Exception as error:  # one failing batch size (e.g. out of memory) should not hide the others
            rows.append(dict(model=spec["model"], work=work, variant=variant, batch=batch,
                             error=f"{type(error).__name__}: {error}"))
            continue
        # The FLOP limit uses the matmul rate measured now, in this process: load from other processes varies.
        rate = matmul_rate(rate_dtype, device, repeats=2)
        for row in results if isinstance(results, list) else [results]:
            row.setdefault("work", work)
            row.setdefault("memory_mb", _peak_memory_mb(device))
            row.update(model=spec["model"], variant=variant, batch=batch, threads=spec["threads"],
                       img_s=batch / row["seconds"], ms=row["seconds"] * 1e3, gflop=row["flops"] / 1e9,
                       rate_gflops=rate / 1e9, limit=row["seconds"] / (row["flops"] / rate))
            if "gen_seconds" in row:
                row["gen_img_s"] = batch / row["gen_seconds"]
                row["gen_limit"] = row["gen_seconds"] / (row["gen_flops"] / rate)
            rows.append(row)
            logger.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return rows


def _sample_step(spec, vqvae, transformer, batch) -> dict:
    device, variant = spec["device"], spec["variant"]
    config = transformer.config
    ids = _half_masked_ids(config, batch, device)
    autocast = variant == "bf16-autocast"

    def step():
        with torch.no_grad():
            transformer(input_ids=ids)

    with _autocast(device, autocast):
        # The first call in an autocast region casts the weights (cached for the region, i.e. once per
        # generation when the whole pipeline call runs under autocast); it is charged once per generation.
        first = _time(step, device, 0, 1)
        seconds = _time(step, device, spec["warmup"], spec["repeats"])
    cast_seconds = max(0.0, first - seconds) if autocast else 0.0
    flops = transformer_flops(config, batch, 1 + config.num_tokens)

    from mage_hf import MageScheduler

    scheduler = MageScheduler(mask_token_id=config.mask_token_id)
    scheduler.set_timesteps(GEN_STEPS, device=device)
    logits = torch.randn(batch, config.num_tokens, config.codebook_size, device=device)
    latents = torch.full((batch, config.num_tokens), config.mask_token_id, device=device)
    generator = [torch.Generator(device).manual_seed(i) for i in range(batch)]
    scheduler_seconds = _time(lambda: scheduler.step(logits, 0, latents, generator=generator), device, 1, 3)

    if "_decode_seconds_per_image" not in spec:  # measured once per child, at batch 1
        spec["_decode_seconds_per_image"] = _decode_seconds(spec, vqvae, config)
    decode_seconds = spec["_decode_seconds_per_image"]
    gen_seconds = GEN_STEPS * (seconds + scheduler_seconds) + cast_seconds + batch * decode_seconds
    grid = config.image_size
    gen_flops = GEN_STEPS * flops + batch * vq_conv_flops(vqvae, grid, grid, "decoder")
    return dict(seconds=seconds, flops=flops, gen_seconds=gen_seconds, gen_flops=gen_flops,
                scheduler_ms=scheduler_seconds * 1e3, decode_ms_per_image=decode_seconds * 1e3,
                cast_ms=cast_seconds * 1e3, first_call_ms=first * 1e3)


def _decode_seconds(spec, vqvae, config) -> float:
    """Seconds to decode one image, the way this variant's generation decodes (bf16: the fast path)."""
    if spec["variant"].startswith("bf16"):
        vqvae.enable_fast_decode(torch.bfloat16, channels_last=True)
    ids = torch.zeros(1, config.num_tokens, dtype=torch.long, device=spec["device"])
    with torch.no_grad():
        seconds = _time(lambda: vqvae.decode_tokens(ids), spec["device"], 1, 1 if spec["quick"] else 2)
    vqvae.disable_fast_decode()
    return seconds


def _embed(spec, vqvae, transformer, batch) -> dict:
    device = spec["device"]
    config = transformer.config
    pixels = sample_images(batch, config.image_size, device)

    def fn():
        with torch.no_grad(), _autocast(device, spec["variant"] == "bf16-autocast"):
            transformer.mage(pixel_values=pixels)

    seconds = _time(fn, device, spec["warmup"], spec["heavy_repeats"])
    flops = transformer_flops(config, batch, 1 + config.num_tokens, decoder=False)
    flops += batch * vq_conv_flops(vqvae, config.image_size, config.image_size, "encoder")
    return dict(seconds=seconds, flops=flops)


def _pretrain(spec, vqvae, transformer, batch) -> list[dict]:
    """Forward + backward + AdamW step on pre-tokenized ids and/or tokenizing pixels on the fly. With both, the
    two alternate (best of the repeats each), so their ratio does not depend on the machine's load over time;
    peak memory is read after the pre-tokenized warm-up (before the pixel path has run at this batch size)."""
    device = spec["device"]
    works = ["pretrain-tokens", "pretrain-pixels"] if spec["work"] == "pretrain" else [spec["work"]]
    config = transformer.config
    transformer.train()
    # The fused AdamW (one kernel for all parameters; `optim="adamw_torch_fused"` in `TrainingArguments`).
    optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=1e-4, fused=True)
    pixels = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    token_ids = transformer.mage.tokenize(pixels)
    generator = torch.Generator().manual_seed(0)

    def train_step(work):
        with _autocast(device, spec["variant"] == "bf16-autocast"):
            if work == "pretrain-pixels":
                loss = transformer(pixel_values=pixels, generator=generator).loss
            else:
                token_mask, drop_mask = transformer.sample_masks(batch, device, generator)
                ids = transformer.mage.build_input_ids(torch.where(token_mask[:, 1:], config.mask_token_id, token_ids))
                loss = transformer(input_ids=ids, token_drop_mask=drop_mask, labels=token_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    best, memory = {}, {}
    for work in works:
        for _ in range(spec["warmup"]):
            train_step(work)
        _sync(device)
        memory[work] = _peak_memory_mb(device)
    for _ in range(spec["heavy_repeats"]):
        for work in works:
            best[work] = min(best.get(work, float("inf")), _time(lambda: train_step(work), device, 0, 1))
    transformer.eval()
    kept = 1 + config.num_tokens - int(config.num_tokens * config.mask_ratio_min + 0.999999)
    flops = 3 * transformer_flops(config, batch, kept)
    encoder_flops = batch * vq_conv_flops(vqvae, config.image_size, config.image_size, "encoder")
    return [dict(work=work, seconds=best[work], memory_mb=memory[work],
                 flops=flops + (encoder_flops if work == "pretrain-pixels" else 0)) for work in works]


def _vq_decode(spec, vqvae, transformer, batch) -> dict:
    device, variant = spec["device"], spec["variant"]
    config = transformer.config
    grid = config.token_grid_size
    ids = torch.randint(0, config.codebook_size, (batch, config.num_tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    with torch.no_grad():
        reference = vqvae.decode_tokens(ids, grid_size=(grid, grid))
        if variant != "fp32":
            dtype = torch.bfloat16 if variant.startswith("bf16") else None
            vqvae.enable_fast_decode(dtype=dtype, channels_last=variant in ("channels-last", "bf16-fast"))
        fast = vqvae.decode_tokens(ids, grid_size=(grid, grid))
        seconds = _time(lambda: vqvae.decode_tokens(ids, grid_size=(grid, grid)), device, 0, spec["heavy_repeats"])
        vqvae.disable_fast_decode()
    flops = batch * vq_conv_flops(vqvae, config.image_size, config.image_size, "decoder")
    return dict(seconds=seconds, flops=flops, psnr=psnr(fast, reference))


# ----------------------------------------------------------------------------- paired fp32 vs bf16 generation
def paired_generation(model_name: str, device: str, batches: list[int], threads: int, rounds: int) -> list[dict]:
    """fp32 vs bf16 generation speed in one process, the variants alternating within each round (best of
    `rounds`): unlike rows from separate processes minutes apart, the ratio does not depend on how busy the
    machine was at each moment. A generation = 20 steps + one VQ decode per image (fp32 decode for fp32, the
    fast decode for bf16)."""
    torch.set_num_threads(threads)
    vqvae, transformer = build_models(model_name, device)
    config = transformer.config
    bf16_model = to_bf16_weights(copy.deepcopy(transformer))
    grid = config.token_grid_size
    decode_ids = torch.zeros(1, config.num_tokens, dtype=torch.long, device=device)

    def decode(fast: bool) -> float:
        if fast:
            vqvae.enable_fast_decode(torch.bfloat16, channels_last=True)
        with torch.no_grad():
            seconds = _time(lambda: vqvae.decode_tokens(decode_ids, grid_size=(grid, grid)), device, 0, 1)
        vqvae.disable_fast_decode()
        return seconds

    decode(False), decode(True)  # warm-up
    decode_seconds = {"fp32": float("inf"), "fast": float("inf")}
    for _ in range(rounds):
        decode_seconds = {"fp32": min(decode_seconds["fp32"], decode(False)), "fast": min(decode_seconds["fast"], decode(True))}
    results = []
    for batch in batches:
        ids = _half_masked_ids(config, batch, device)

        def step(model):
            with torch.no_grad():
                model(input_ids=ids)

        best = {"fp32": float("inf"), "bf16-weights": float("inf"), "bf16-autocast": float("inf")}
        step(transformer), step(bf16_model)
        for _ in range(rounds):
            best["fp32"] = min(best["fp32"], _time(lambda: step(transformer), device, 0, 1))
            best["bf16-weights"] = min(best["bf16-weights"], _time(lambda: step(bf16_model), device, 0, 1))
            with _autocast(device, True):
                step(transformer)  # casts the weights: once per generation under `with torch.autocast(...): pipe(...)`
                best["bf16-autocast"] = min(best["bf16-autocast"], _time(lambda: step(transformer), device, 0, 1))
        gen = {name: batch / (GEN_STEPS * seconds + batch * decode_seconds["fp32" if name == "fp32" else "fast"])
               for name, seconds in best.items()}
        results.append(dict(model=model_name, batch=batch, step_ms={k: v * 1e3 for k, v in best.items()},
                            decode_ms={k: v * 1e3 for k, v in decode_seconds.items()}, gen_img_s=gen))
        logger.info("%s", results[-1])
    return results


# ----------------------------------------------------------------------------- accuracy of the fast paths
def fast_path_accuracy(model_name: str, device: str, batch: int, threads: int) -> dict:
    """bf16 (autocast and weights) vs float32 on the same inputs, SDPA vs eager, batch-size independence."""
    torch.set_num_threads(threads)
    vqvae, transformer = build_models(model_name, device)
    config = transformer.config
    codebook = config.codebook_size
    first_step = _masked_ids(config, batch, device, fraction=1.0)
    half = _masked_ids(config, batch, device, fraction=0.5, seed=1)
    pixels = sample_images(batch, config.image_size, device)
    bf16_model = to_bf16_weights(copy.deepcopy(transformer))

    def logits_of(model, ids, autocast=False):
        with torch.no_grad(), _autocast(device, autocast):
            return model(input_ids=ids).logits[:, 1:, :codebook].float()

    def embed_of(model, autocast=False):
        with torch.no_grad(), _autocast(device, autocast):
            return model.mage(pixel_values=pixels).pooler_output.float()

    result = dict(model=model_name)
    with torch.no_grad():
        tokens = transformer.mage.tokenize(pixels)
        with _autocast(device, True):
            result["tokenize_agreement_autocast"] = (transformer.mage.tokenize(pixels) == tokens).float().mean().item()
        result["tokenize_agreement_weights"] = (bf16_model.mage.tokenize(pixels) == tokens).float().mean().item()
    for name, ids in (("first_step", first_step), ("half_masked", half)):
        reference = logits_of(transformer, ids)
        top2 = reference.topk(2, dim=-1).values
        result[f"{name}_median_margin"] = (top2[..., 0] - top2[..., 1]).median().item()
        for variant, logits in (("autocast", logits_of(transformer, ids, True)), ("weights", logits_of(bf16_model, ids))):
            result[f"{name}_agreement_{variant}"] = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
    emb32 = embed_of(transformer)
    for variant, emb in (("autocast", embed_of(transformer, True)), ("weights", embed_of(bf16_model))):
        result[f"embedding_cosine_{variant}"] = torch.nn.functional.cosine_similarity(emb32, emb, dim=-1).min().item()

    # SDPA (the default) against the original's eager maths, float32.
    sdpa = logits_of(transformer, half)
    transformer.config._attn_implementation = "eager"
    eager = logits_of(transformer, half)
    transformer.config._attn_implementation = "sdpa"
    result["sdpa_vs_eager_rel"] = ((sdpa - eager).norm() / eager.norm()).item()
    # Batch-size independence: image 0 alone vs in the batch, float32 and bf16.
    result["batch_independence_fp32"] = (logits_of(transformer, half[:1]) - sdpa[:1]).abs().max().item()
    bf16_half = logits_of(bf16_model, half)
    result["batch_independence_bf16"] = (logits_of(bf16_model, half[:1]) - bf16_half[:1]).abs().max().item()
    with torch.no_grad():
        result["embedding_batch_independence"] = (
            transformer.mage(pixel_values=pixels[:1]).pooler_output - emb32[:1]).abs().max().item()

    # Fast VQ decode of the images' tokens and of random token grids (the worst of the two).
    grid = config.token_grid_size
    random_ids = torch.randint(0, codebook, (2, config.num_tokens), generator=torch.Generator().manual_seed(3)).to(device)
    worst = float("inf")
    for decode_ids in (tokens[:2], random_ids):
        with torch.no_grad():
            reference = vqvae.decode_tokens(decode_ids, grid_size=(grid, grid))
            vqvae.enable_fast_decode(torch.bfloat16, channels_last=True)
            worst = min(worst, psnr(vqvae.decode_tokens(decode_ids, grid_size=(grid, grid)), reference))
            vqvae.disable_fast_decode()
    result["vq_fast_decode_psnr"] = worst
    return result


# ----------------------------------------------------------------------------- child processes
def in_child(target, *args):
    """Run `target(*args)` in a fresh spawned process; an error (or a crash) comes back as {"error": ...}."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_target, args=(target, args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                result = dict(error=f"child process died (exit code {process.exitcode}; out of memory?)")
                break
    process.join()
    return result


def _run_target(target, args, queue):
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    try:
        queue.put(target(*args))
    except Exception as error:
        queue.put(dict(error=f"{type(error).__name__}: {error}"))


# ----------------------------------------------------------------------------- report
def _fmt(value, digits=2, suffix=""):
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def format_report(header: list[str], rows: list[dict], paired: list[dict], accuracy: list[dict], notes: list[str]) -> str:
    lines = [*header, "", *_rows_table(rows)]
    if paired:
        lines += ["", *_paired_table(paired)]
    if accuracy:
        lines += ["", *_accuracy_table(accuracy)]
    lines += ["", *target_summary(rows, paired, accuracy)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _rows_table(rows: list[dict]) -> list[str]:
    lines = ["| model | work | variant | batch | ms/iter | img/s | x limit | gen img/s (20 steps) | gen x limit | "
             "GFLOP/iter | matmul GFLOP/s | peak MB | notes |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['work']} | {row['variant']} | {row.get('batch', '')} | "
                         f"error: {row['error'][:100]} ||||||||| ")
            continue
        extra = []
        if "decode_ms_per_image" in row:
            extra.append(f"decode {row['decode_ms_per_image']:.0f} ms/img, scheduler {row['scheduler_ms']:.1f} ms")
            if row.get("cast_ms"):
                extra.append(f"weight cast {row['cast_ms']:.0f} ms/gen")
            if row["variant"] == "compile":
                extra.append(f"first call (compiling) {row['first_call_ms'] / 1e3:.0f} s")
        if "psnr" in row:
            extra.append(f"PSNR {row['psnr']:.1f} dB vs fp32")
        lines.append(
            f"| {row['model']} | {row['work']} | {row['variant']} | {row['batch']} | {row['ms']:.1f} | {row['img_s']:.3f} | "
            f"{row['limit']:.2f} | {_fmt(row.get('gen_img_s'), 4)} | {_fmt(row.get('gen_limit'))} | {row['gflop']:.1f} | "
            f"{row['rate_gflops']:.0f} | {row['memory_mb']:.0f} | {'; '.join(extra)} |"
        )
    return lines


def _paired_table(paired: list[dict]) -> list[str]:
    lines = ["Paired fp32 vs bf16 generation (one process, variants alternating, best of the rounds; "
             "generation = 20 steps + VQ decode, fast decode for bf16):", "",
             "| model | batch | step ms fp32 / bf16-weights / bf16-autocast | VQ decode ms/img fp32 / fast | "
             "gen img/s fp32 / bf16-weights / bf16-autocast | bf16 speed-up weights / autocast |", "|---|---|---|---|---|---|"]
    for run in paired:
        if "error" in run:
            lines.append(f"| {run['model']} | | error: {run['error'][:100]} ||||")
            continue
        step, decode, gen = run["step_ms"], run["decode_ms"], run["gen_img_s"]
        lines.append(
            f"| {run['model']} | {run['batch']} | {step['fp32']:.0f} / {step['bf16-weights']:.0f} / {step['bf16-autocast']:.0f} | "
            f"{decode['fp32']:.0f} / {decode['fast']:.0f} | {gen['fp32']:.4f} / {gen['bf16-weights']:.4f} / "
            f"{gen['bf16-autocast']:.4f} | {gen['bf16-weights'] / gen['fp32']:.2f}x / {gen['bf16-autocast'] / gen['fp32']:.2f}x |"
        )
    return lines


def _accuracy_table(accuracy: list[dict]) -> list[str]:
    lines = ["| model | first-step agreement autocast / weights | half-masked agreement autocast / weights | "
             "median top-2 logit margin | embedding cosine (min) autocast / weights | SDPA vs eager (rel) | "
             "batch independence fp32 / bf16 / embedding (max abs) | VQ token ids autocast / weights | fast VQ decode PSNR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for acc in accuracy:
        if "error" in acc:
            lines.append(f"| {acc['model']} | error: {acc['error'][:120]} ||||||||")
            continue
        lines.append(
            f"| {acc['model']} | {acc['first_step_agreement_autocast']:.2%} / {acc['first_step_agreement_weights']:.2%} | "
            f"{acc['half_masked_agreement_autocast']:.2%} / {acc['half_masked_agreement_weights']:.2%} | "
            f"{acc['half_masked_median_margin']:.4f} | "
            f"{acc['embedding_cosine_autocast']:.5f} / {acc['embedding_cosine_weights']:.5f} | {acc['sdpa_vs_eager_rel']:.1e} | "
            f"{acc['batch_independence_fp32']:.1e} / {acc['batch_independence_bf16']:.1e} / "
            f"{acc['embedding_batch_independence']:.1e} | {acc['tokenize_agreement_autocast']:.2%} / "
            f"{acc['tokenize_agreement_weights']:.2%} | {acc['vq_fast_decode_psnr']:.1f} dB |"
        )
    return lines


def target_summary(rows: list[dict], paired: list[dict], accuracy: list[dict]) -> list[str]:
    """The issue's targets, read off the rows."""
    ok = {(r["model"], r["work"], r["variant"], r["batch"]): r for r in rows if "error" not in r}
    lines = ["Targets:"]
    for run in paired:
        if "error" not in run:
            gen = run["gen_img_s"]
            lines.append(f"- {run['model']} bf16 generation at batch {run['batch']} (paired): weights {gen['bf16-weights'] / gen['fp32']:.2f}x, "
                         f"autocast {gen['bf16-autocast'] / gen['fp32']:.2f}x fp32 (target >= 3)")
    for (model, work, variant, batch), row in sorted(ok.items()):
        if work == "sample-step" and variant == "fp32":
            lines.append(f"- {model} fp32 sampling step at batch {batch}: {row['limit']:.2f}x the FLOP limit (target <= 1.2)")
            for fast in ("bf16-weights", "bf16-autocast"):
                other = ok.get((model, work, fast, batch))
                if other:
                    lines.append(f"- {model} {fast} generation at batch {batch} (separate processes): "
                                 f"{other['gen_img_s'] / row['gen_img_s']:.2f}x fp32 (step alone "
                                 f"{row['seconds'] / other['seconds']:.2f}x; target >= 3)")
        if work == "pretrain-tokens":
            pixels = ok.get((model, "pretrain-pixels", variant, batch))
            if pixels:
                lines.append(f"- {model} {variant} pre-training at batch {batch}: pre-tokenized {pixels['seconds'] / row['seconds']:.2f}x "
                             f"the steps/s of on-the-fly tokenization (target >= 2; {pixels['gflop'] / row['gflop']:.2f}x "
                             "if both ran at the same FLOP rate)")
        if work == "vq-decode" and variant == "bf16-fast":
            base = ok.get((model, work, "fp32", batch))
            speed = f"{base['seconds'] / row['seconds']:.2f}x fp32, " if base else ""
            lines.append(f"- {model} fast VQ decode (bf16 + channels-last) at batch {batch}: {speed}PSNR {row['psnr']:.1f} dB (target >= 40)")
    for acc in accuracy:
        if "error" not in acc:
            worst = min(acc["first_step_agreement_autocast"], acc["first_step_agreement_weights"],
                        acc["half_masked_agreement_autocast"], acc["half_masked_agreement_weights"])
            lines.append(f"- {acc['model']} bf16 token agreement with fp32: worst {worst:.2%} (target >= 99%)")
    return lines


# ----------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vitb", "default"], choices=["vitb", "default", "fixture", "tiny"])
    parser.add_argument("--accuracy-models", nargs="*", default=None,
                        help="models for the accuracy table (default: --models plus `fixture` when it exists)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=list(ALL_VARIANTS), choices=list(ALL_VARIANTS))
    work_names = [w for w in WORK_VARIANTS if w != "pretrain"]
    parser.add_argument("--works", nargs="+", default=work_names, choices=work_names)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer repeats; compile at the smallest batch only")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--no-paired", dest="paired", action="store_false",
                        help="skip the paired fp32 vs bf16 generation runs (one process, alternating variants)")
    return parser.parse_args()


def run_speed(args: argparse.Namespace, model: str) -> tuple[list[dict], list[dict]]:
    """(rows, paired runs) of one model: one child process per (work, variant)."""
    rows, paired = [], []
    batches = sorted(args.batch_sizes or ([1, 4] if args.device == "cpu" and model == "vitb" else [16, 64]))
    works = [w for w in args.works if not w.startswith("pretrain")]
    pretrain = [w for w in args.works if w.startswith("pretrain")]
    works += ["pretrain"] if len(pretrain) == 2 else pretrain
    for work in works:
        for variant in (v for v in WORK_VARIANTS[work] if v in args.variants):
            work_batches = [1] if work == "vq-decode" else batches
            if variant == "compile" and args.quick:
                work_batches = work_batches[:1]  # each new batch size recompiles
            spec = dict(model=model, work=work, variant=variant, batches=work_batches, device=args.device,
                        threads=args.threads, quick=args.quick, warmup=1,
                        repeats=2 if args.quick else 5, heavy_repeats=1 if args.quick else 3)
            logger.info("running %s %s %s at batch sizes %s", model, work, variant, work_batches)
            result = in_child(run_rows, spec)
            if isinstance(result, dict):  # the whole child failed
                result = [dict(model=model, work=work, variant=variant, batch=b, **result) for b in work_batches]
            rows += result
    if args.paired and "sample-step" in args.works:
        logger.info("paired fp32 vs bf16 generation: %s at batch sizes %s", model, batches)
        result = in_child(paired_generation, model, args.device, batches, args.threads, 2 if args.quick else 3)
        paired += [dict(model=model, **result)] if isinstance(result, dict) else result
    return rows, paired


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    torch.set_num_threads(args.threads)

    notes = []
    models = list(args.models)
    accuracy_models = args.accuracy_models
    if accuracy_models is None:
        accuracy_models = [m for m in models if m != "fixture"] + (["fixture"] if (FIXTURE_DIR / "config.json").is_file() else [])
    if "default" in models + accuracy_models and not default_model_available():
        from mage_hf import DEFAULT_MODEL_PATH

        note = f"note: the default model is skipped: `mage_hf.DEFAULT_MODEL_PATH` ({DEFAULT_MODEL_PATH}) has no model_index.json yet"
        logger.warning(note)
        notes.append(note)
        models = [m for m in models if m != "default"]
        accuracy_models = [m for m in accuracy_models if m != "default"]

    rates = {"fp32": matmul_rate(torch.float32, args.device), "bf16": matmul_rate(torch.bfloat16, args.device)}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = [
        f"mage-hf benchmark  {datetime.date.today()}  {cpu_name()}  device={args.device}  "
        f"threads={args.threads} (of {os.cpu_count()} CPUs, load average {load:.1f} at start)  torch {torch.__version__}"
        + ("  [quick]" if args.quick else ""),
        f"measured matmul rate (2048^2, {args.threads} threads): fp32 {rates['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s",
    ]
    if args.device == "cpu" and load > os.cpu_count() - args.threads + 0.5:
        notes.append(f"note: the machine was busy (load average {load:.1f} on {os.cpu_count()} CPUs): with more threads than "
                     "free cores every parallel op waits for a descheduled thread; compare rows of this run only, or "
                     "use --threads 1")
    logger.info("%s", "\n".join(header))

    rows, paired, accuracy = [], [], []
    for model in models:
        model_rows, model_paired = run_speed(args, model)
        rows += model_rows
        paired += model_paired
    for model in accuracy_models:
        logger.info("accuracy of the fast paths: %s", model)
        batch = 4 if model == "vitb" and args.device == "cpu" else 8
        result = in_child(fast_path_accuracy, model, args.device, batch, args.threads)
        result.setdefault("model", model)
        accuracy.append(result)

    notes.append(f"total benchmark time {time.perf_counter() - started:.0f} s")
    print(format_report(header, rows, paired, accuracy, notes))  # the tables are this script's output
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(header=header, rates=rates, rows=rows, paired=paired, accuracy=accuracy, notes=notes),
                      handle, indent=1, default=str)


if __name__ == "__main__":
    main()
