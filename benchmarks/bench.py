"""Speed, memory and fast-path accuracy of mage-hf, printed as a table.

Each row runs in a fresh child process (so peak memory is that row's alone) and is compared with the FLOP
limit: the analytic FLOPs of the work divided by this machine's measured matmul rate in the same dtype.

    python benchmarks/bench.py                      # ViT-B/256 shapes (random weights) + the default model
    python benchmarks/bench.py --models default --quick
    python benchmarks/bench.py --device cuda --batch-sizes 64 128

Columns: `ms/iter` is one call (a sampling step = one transformer forward over the whole grid);
`img/s` is images per second for that call; `gen img/s` extrapolates a 20-step generation (20 steps +
one VQ decode, both measured); `FLOP limit` is ms/iter divided by the time the FLOPs would take at the
measured matmul rate (1.0 = at the limit; the target for fp32 sampling is <= 1.2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing as mp
import platform
import resource
import statistics
import time

import torch

logger = logging.getLogger("bench")

GEN_STEPS = 20


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
        total += stack(config.decoder_hidden_size, config.decoder_intermediate_size, config.decoder_num_hidden_layers, length)
        total += 2 * length * (config.decoder_hidden_size * config.hidden_size + config.hidden_size * config.vocab_size)
    return batch * total


def vq_conv_flops(vq, height: int, width: int, part: str) -> float:
    """FLOPs of the VQ encoder or decoder convolutions for one image, counted with forward hooks."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += 2 * output.numel() * kernel

    handles = [m.register_forward_hook(hook) for m in getattr(vq, part).modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        if part == "encoder":
            vq.encoder(torch.zeros(1, vq.config.in_channels, height, width))
        else:
            factor = vq.downsample_factor
            vq.decoder(torch.zeros(1, vq.config.latent_channels, height // factor, width // factor))
    for handle in handles:
        handle.remove()
    return float(total)


def matmul_rate(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of a square matmul."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- models
def build_models(name: str, device: str):
    """(vqvae, transformer) for `vitb` (random weights at the real ViT-B/256 shapes) or `default`."""
    from mage_hf import MageConfig, MageForMaskedImageModeling, MagePipeline, MageVQModel

    if name == "vitb":
        torch.manual_seed(0)
        config = MageConfig.from_preset("mage_vit_base_patch16")
        transformer = MageForMaskedImageModeling(config)
        vqvae = MageVQModel(**config.vqvae_config)
    else:
        from mage_hf import DEFAULT_MODEL_PATH

        pipe = MagePipeline.from_pretrained(DEFAULT_MODEL_PATH)
        transformer, vqvae = pipe.transformer, pipe.vqvae
    return vqvae.eval().to(device), transformer.eval().to(device)


def _half_masked_ids(config, batch: int, device: str) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.codebook_size, (batch, config.num_tokens), generator=generator)
    masked = torch.rand(batch, config.num_tokens, generator=generator) < 0.5
    ids = torch.where(masked, config.mask_token_id, ids)
    return torch.cat([torch.full((batch, 1), config.fake_class_label), ids], dim=1).to(device)


def _time(fn, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- one row
def run_row(spec: dict) -> dict:
    """Runs in a child process: build, time one workload in one variant, report."""
    torch.set_num_threads(spec["threads"])
    device, variant, batch, work = spec["device"], spec["variant"], spec["batch"], spec["work"]
    vqvae, transformer = build_models(spec["model"], device)
    config = transformer.config
    if variant == "eager":
        transformer.config._attn_implementation = "eager"
    if variant == "bf16-weights":
        transformer.to(torch.bfloat16)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=variant == "bf16-autocast")
    model = torch.compile(transformer) if variant == "compile" else transformer
    size = config.image_size
    pixels = torch.rand(batch, 3, size, size, device=device)
    low_precision = variant.startswith("bf16")

    if work == "sample-step":
        ids = _half_masked_ids(config, batch, device)

        def fn():
            with torch.no_grad(), autocast:
                model(input_ids=ids)

        flops = transformer_flops(config, batch, 1 + config.num_tokens)
    elif work == "embed":
        def fn():
            with torch.no_grad(), autocast:
                model.mage(pixel_values=pixels)

        flops = transformer_flops(config, batch, 1 + config.num_tokens, decoder=False)
        flops += batch * vq_conv_flops(vqvae, size, size, "encoder")
    else:  # pretrain-pixels / pretrain-tokens: forward + backward + optimizer step
        transformer.train()
        optimizer = torch.optim.AdamW([p for p in transformer.parameters() if p.requires_grad], lr=1e-4)
        token_ids = transformer.mage.tokenize(pixels) if work == "pretrain-tokens" else None

        def fn():
            with autocast:
                if token_ids is None:
                    loss = model(pixel_values=pixels).loss
                else:
                    token_mask, drop_mask = transformer.sample_masks(batch, device)
                    ids = transformer.mage.build_input_ids(torch.where(token_mask[:, 1:], config.mask_token_id, token_ids))
                    loss = model(input_ids=ids, token_drop_mask=drop_mask, labels=token_ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        kept = 1 + config.num_tokens - int(config.num_tokens * config.mask_ratio_min + 0.999999)
        flops = 3 * transformer_flops(config, batch, kept)
        if work == "pretrain-pixels":
            flops += batch * vq_conv_flops(vqvae, size, size, "encoder")

    seconds = _time(fn, device, spec["warmup"], spec["repeats"])
    rate = spec["rates"]["bf16" if low_precision else "fp32"]
    row = dict(spec, ms=seconds * 1e3, img_s=batch / seconds, gflop=flops / 1e9,
               limit=seconds / (flops / rate), memory_mb=_peak_memory_mb(device))
    if work == "sample-step":
        latents = vqvae.quantize.lookup(torch.zeros(batch, config.num_tokens, dtype=torch.long, device=device),
                                        config.token_grid_size, config.token_grid_size)
        with torch.no_grad():
            decode = _time(lambda: vqvae.decode(latents), device, 1, max(1, spec["repeats"] // 2))
        row["gen_img_s"] = batch / (GEN_STEPS * seconds + decode)
    row.pop("rates")
    return row


def fast_path_accuracy(model_name: str, device: str, batch: int) -> dict:
    """bf16 vs fp32 on the same inputs: first-step token agreement and embedding cosine."""
    torch.set_num_threads(torch.get_num_threads())
    vqvae, transformer = build_models(model_name, device)
    config = transformer.config
    ids = _half_masked_ids(config, batch, device)
    pixels = torch.rand(batch, 3, config.image_size, config.image_size, device=device)
    with torch.no_grad():
        logits32 = transformer(input_ids=ids).logits[:, 1:, : config.codebook_size]
        emb32 = transformer.mage(pixel_values=pixels).pooler_output
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            logits16 = transformer(input_ids=ids).logits[:, 1:, : config.codebook_size]
            emb16 = transformer.mage(pixel_values=pixels).pooler_output
    agree = (logits32.argmax(-1) == logits16.argmax(-1)).float().mean().item()
    cosine = torch.nn.functional.cosine_similarity(emb32, emb16.float(), dim=-1).mean().item()
    return dict(model=model_name, token_agreement=agree, embedding_cosine=cosine)


def in_child(target, *args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_target, args=(target, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _run_target(target, args, queue):
    try:
        queue.put(target(*args))
    except Exception as error:
        queue.put(dict(error=f"{type(error).__name__}: {error}"))


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vitb", "default"], choices=["vitb", "default"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=["fp32", "eager", "bf16-autocast", "bf16-weights", "compile"])
    parser.add_argument("--works", nargs="+", default=["sample-step", "embed", "pretrain-pixels", "pretrain-tokens"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rates = {"fp32": matmul_rate(torch.float32, args.device), "bf16": matmul_rate(torch.bfloat16, args.device)}
    header = (f"mage-hf benchmark  {datetime.date.today()}  {platform.processor() or platform.machine()}  "
              f"device={args.device}  threads={args.threads}  torch {torch.__version__}")
    lines = [header, f"measured matmul rate: fp32 {rates['fp32'] / 1e9:.1f} GFLOP/s, bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s"]
    rows = []
    for model in args.models:
        batches = args.batch_sizes or ([1, 4] if model == "vitb" and args.device == "cpu" else [16, 64])
        for work in args.works:
            for variant in args.variants:
                if work.startswith("pretrain") and variant in ("eager", "compile", "bf16-weights"):
                    continue
                for batch in batches:
                    spec = dict(model=model, work=work, variant=variant, batch=batch, device=args.device,
                                threads=args.threads, rates=rates, warmup=1 if args.quick else 2,
                                repeats=2 if args.quick else 5)
                    row = in_child(run_row, spec)
                    rows.append(row)
                    logger.info("%s", {k: v for k, v in row.items() if k != "rates"})
        rows.append(dict(model=model, accuracy=in_child(fast_path_accuracy, model, args.device, 8)))

    lines.append("")
    lines.append("| model | work | variant | batch | ms/iter | img/s | gen img/s (20 steps) | GFLOP/iter | FLOP limit x | peak MB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "accuracy" in row:
            continue
        if "error" in row:
            lines.append(f"| {row['model']} | {row['work']} | {row['variant']} | {row['batch']} | error: {row['error'][:60]} |||||| ")
            continue
        gen = f"{row['gen_img_s']:.3f}" if "gen_img_s" in row else ""
        lines.append(
            f"| {row['model']} | {row['work']} | {row['variant']} | {row['batch']} | {row['ms']:.1f} | {row['img_s']:.2f} | "
            f"{gen} | {row['gflop']:.1f} | {row['limit']:.2f} | {row['memory_mb']:.0f} |"
        )
    lines.append("")
    lines.append("| model | bf16 vs fp32: first-step token agreement | embedding cosine |")
    lines.append("|---|---|---|")
    for row in rows:
        if "accuracy" in row:
            acc = row["accuracy"]
            if "error" in acc:
                lines.append(f"| {row['model']} | error: {acc['error'][:80]} | |")
            else:
                lines.append(f"| {row['model']} | {acc['token_agreement'] * 100:.2f}% | {acc['embedding_cosine']:.5f} |")
    print("\n".join(lines))  # the table is this script's output
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(header=header, rates=rates, rows=rows), handle, indent=1, default=str)


if __name__ == "__main__":
    main()
