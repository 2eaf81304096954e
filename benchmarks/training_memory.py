"""Memory per GPU for MAGE pre-training (the ViT-B / ViT-L presets, 256 px) under DDP and FSDP2, as a table.

Counted from the presets (no weights needed), float32 as `examples/pretrain.py` keeps them (bf16 is autocast):
- DDP: parameters (4 B each, the frozen tokenizer included), gradients (4 B per trainable parameter) plus DDP's
  bucket copy of them for the all-reduce (another 4 B; none with `gradient_as_bucket_view=True`), AdamW's two
  moments (8 B);
- FSDP2 on N GPUs (examples/accelerate_fsdp.yaml): parameters, gradients and moments sharded 1/N, plus what is
  whole at a time: the root unit's parameters and gradients (never resharded between forward and backward), two
  `MageLayer` units (the running one and the prefetched next) with their unsharded gradients, and the frozen VQ
  tokenizer, replicated in float32 (ignored by FSDP);
Measured, bf16 autocast, the training forward of `pretrain.py` (pixels tokenized inside it, `mask_ratio_min` of
the tokens dropped from the encoder, dropout on):
- activations: the tensors autograd saves for backward (the weights themselves excluded), measured at two small
  batches and extended linearly (a per-image part and a fixed part: autocast's bf16 copies of the weights, which
  FSDP2's bf16 mixed precision does not make: it gathers the weights in bf16 already);
- tokenizer peak: the most memory the frozen VQ encoder's (no-grad) forward holds at once; it runs and frees
  before the transformer saves anything, so a step needs max(tokenizer peak, activations) on top of the states.
Measured with fake tensors (`FakeTensorMode`: the real operators' shape and dtype rules on CPU, nothing
computed), so a ViT-L takes seconds; `--check` repeats the tiny test model's measurement with real tensors.
Attention runs the CPU `sdpa` kernels here; a GPU's flash / memory-efficient kernels save less for attention
dropout. Not counted: the gradient of the activation in flight during backward (about one layer's), the
allocator's fragmentation, the CUDA context (~0.5 GiB), data loading.

    python benchmarks/training_memory.py                       # ViT-B and ViT-L, batch 64 per GPU, 8 GPUs
    python benchmarks/training_memory.py --batch_size 32 --num_gpus 16 --presets mage_vit_large_patch16
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mage_hf import MageConfig, MageForMaskedImageModeling
from mage_hf.configuration_mage import MAGE_PRESETS

logger = logging.getLogger(__name__)

GIB = 2**30
PRETRAINING_PRESETS = ("mage_vit_base_patch16", "mage_vit_large_patch16")
FP32_BYTES = 4
ADAMW_MOMENTS = 2
BF16_BYTES = 2
UNITS_IN_FLIGHT = 2  # FSDP2: the running block unit and the next one, prefetched


@dataclass
class ParameterCounts:
    total: int
    trainable: int
    tokenizer: int  # frozen, inside the model
    root: int  # what no `MageLayer` / token-embedding / tokenizer unit holds
    root_trainable: int
    largest_layer: int


def count_parameters(config: MageConfig) -> ParameterCounts:
    """The model's parameters by FSDP2 unit (examples/accelerate_fsdp.yaml), built on the meta device."""
    from mage_hf.modeling_mage import MageLayer

    with torch.device("meta"):
        model = MageForMaskedImageModeling(config)
    in_units = set()
    layer_sizes = []
    for module in model.modules():
        if isinstance(module, MageLayer):
            layer_sizes.append(sum(p.numel() for p in module.parameters()))
            in_units.update(id(p) for p in module.parameters())
    for module in (model.get_input_embeddings(), model.mage.vqvae, model.mage.fc_norm):
        in_units.update(id(p) for p in module.parameters())
    root = [p for p in model.parameters() if id(p) not in in_units]
    return ParameterCounts(
        total=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        tokenizer=sum(p.numel() for p in model.mage.vqvae.parameters()),
        root=sum(p.numel() for p in root), root_trainable=sum(p.numel() for p in root if p.requires_grad),
        largest_layer=max(layer_sizes),
    )


def state_bytes(counts: ParameterCounts, strategy: str, num_gpus: int) -> dict[str, float]:
    """Bytes per GPU of parameters, gradients (+ DDP buckets) and AdamW moments, all float32."""
    if strategy == "ddp":
        return {"parameters": FP32_BYTES * counts.total, "gradients": 2 * FP32_BYTES * counts.trainable,
                "adamw": ADAMW_MOMENTS * FP32_BYTES * counts.trainable}
    sharded_params = counts.total - counts.tokenizer
    whole = counts.root + UNITS_IN_FLIGHT * counts.largest_layer  # gathered (in bf16 with mixed precision)
    return {
        "parameters": FP32_BYTES * (sharded_params / num_gpus + counts.tokenizer) + BF16_BYTES * whole,
        "gradients": FP32_BYTES * (counts.trainable / num_gpus + counts.root_trainable
                                   + UNITS_IN_FLIGHT * counts.largest_layer),
        "adamw": ADAMW_MOMENTS * FP32_BYTES * counts.trainable / num_gpus,
    }


@contextlib.contextmanager
def value_checks_off():
    """Fake tensors have no values: skip the input checks that read them (as under `torch.compile`)."""
    import mage_hf.modeling_mage as modeling
    import mage_hf.vq_layers as vq_layers

    saved = modeling._checks_values, vq_layers.check_pixel_values
    modeling._checks_values = lambda: False
    vq_layers.check_pixel_values = lambda *args, **kwargs: None
    try:
        yield
    finally:
        modeling._checks_values, vq_layers.check_pixel_values = saved


def build_model(config: MageConfig, fake_mode=None) -> MageForMaskedImageModeling:
    """The model in training mode; with `fake_mode`, its parameters are fake CPU tensors (no memory)."""
    if fake_mode is None:
        return MageForMaskedImageModeling(config).train()
    with torch.device("meta"):
        model = MageForMaskedImageModeling(config)
    converter = fake_mode.fake_tensor_converter
    cpu = torch.device("cpu")
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                fake = converter.from_meta_and_device(fake_mode, param.data, cpu)
                module._parameters[name] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = converter.from_meta_and_device(fake_mode, buffer, cpu)
    return model.train()


def _pixels(config: MageConfig, batch: int) -> torch.Tensor:
    return torch.rand(batch, config.num_channels, config.image_size, config.image_size)


def saved_activation_bytes(model: MageForMaskedImageModeling, batch: int) -> int:
    """Bytes autograd saves for backward in one bf16-autocast training forward of `batch` images (each storage
    once; the parameters' own storages excluded)."""
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    generator = torch.Generator().manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        # the ratio sets which tokens are masked, not the shapes (the encoder always keeps the same number): fixed,
        # as its truncated-Gaussian draw reads a value
        model(pixel_values=_pixels(model.config, batch), generator=generator, mask_ratio=model.config.mask_ratio_min)
    return sum(saved.values())


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes held by the storages operators return while they are alive, and the peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._owners: dict[int, int] = {}

    def _release(self, key: int, nbytes: int) -> None:
        self._owners[key] -= 1
        if self._owners[key] == 0:
            del self._owners[key]
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key, nbytes = storage._cdata, storage.nbytes()
                if key not in self._owners:
                    self._owners[key] = 0
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                self._owners[key] += 1
                weakref.finalize(tensor, self._release, key, nbytes)
        return out


def tokenizer_peak_bytes(model: MageForMaskedImageModeling, batch: int) -> int:
    """The most bytes the tokenizer's forward on `batch` images holds at once (its outputs included)."""
    pixels = _pixels(model.config, batch)
    tracker = _LiveBytes()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), tracker:
        model.mage.tokenize(pixels)
    return tracker.peak


def linear_fit(measure, batches=(1, 2)) -> tuple[float, float]:
    """(per image, fixed) bytes from `measure(batch)` at two batch sizes."""
    small, large = batches
    at_small, at_large = measure(small), measure(large)
    per_image = (at_large - at_small) / (large - small)
    return per_image, at_small - small * per_image


def measure(config: MageConfig, fake: bool = True) -> dict[str, tuple[float, float]]:
    """{"activations": (per image, fixed), "tokenizer_peak": (per image, fixed)} in bytes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_mode = FakeTensorMode() if fake else None
    model = build_model(config, fake_mode)
    with value_checks_off() if fake else contextlib.nullcontext(), fake_mode or contextlib.nullcontext():
        return {"activations": linear_fit(lambda b: saved_activation_bytes(model, b)),
                "tokenizer_peak": linear_fit(lambda b: tokenizer_peak_bytes(model, b))}


def estimate_rows(configs: dict[str, MageConfig], batch_size: int, num_gpus: int) -> list[dict]:
    """One row per model and strategy (DDP, FSDP2 on `num_gpus`), in GiB."""
    rows = []
    for name, config in configs.items():
        counts = count_parameters(config)
        measured = measure(config)
        per_image, fixed = measured["activations"]
        tokenizer = measured["tokenizer_peak"][0] * batch_size + measured["tokenizer_peak"][1]
        for strategy in ("ddp", "fsdp2"):
            states = state_bytes(counts, strategy, num_gpus)
            # FSDP2's bf16 mixed precision gathers the weights in bf16 (counted with the parameters): autocast
            # then has no float32 weight to copy, and the fixed part is DDP's only
            activations = per_image * batch_size + (fixed if strategy == "ddp" else 0)
            rows.append({
                "preset": name, "strategy": strategy if strategy == "ddp" else f"fsdp2 x{num_gpus}",
                "parameters_m": counts.total / 1e6, **{k: v / GIB for k, v in states.items()},
                "activations": activations / GIB, "activations_per_image_mib": per_image / 2**20,
                "tokenizer_peak": tokenizer / GIB,
                "total": (sum(states.values()) + max(activations, tokenizer)) / GIB,
            })
    return rows


def format_table(rows: list[dict], batch_size: int) -> str:
    header = (f"| model | strategy | params (M) | parameters | gradients | AdamW "
              f"| activations (bf16, {batch_size}/GPU) | VQ tokenizer peak | total per GPU |")
    lines = [header, "|" + " --- |" * 9]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['strategy']} | {r['parameters_m']:.0f} | {r['parameters']:.2f} GiB | "
            f"{r['gradients']:.2f} GiB | {r['adamw']:.2f} GiB | {r['activations']:.1f} GiB "
            f"({r['activations_per_image_mib']:.0f} MiB/image) | {r['tokenizer_peak']:.1f} GiB | {r['total']:.1f} GiB |"
        )
    return "\n".join(lines)


def check_against_real_tensors() -> float:
    """The largest relative difference between fake- and real-tensor measurements on a tiny model."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import tiny_config_kwargs

    config = MageConfig(**tiny_config_kwargs())
    torch.manual_seed(0)
    real, fake = measure(config, fake=False), measure(config, fake=True)
    return max(abs(f - r) / r for key in real for r, f in zip(real[key], fake[key]) if r)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRETRAINING_PRESETS), choices=sorted(MAGE_PRESETS))
    parser.add_argument("--batch_size", type=int, default=64, help="Images per GPU.")
    parser.add_argument("--num_gpus", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--check", action="store_true", help="Also compare fake- with real-tensor measurements.")
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    if args.check:
        logger.info(f"fake vs real tensors, tiny model: largest relative difference {check_against_real_tensors():.2e}")
    configs = {name: MageConfig.from_preset(name, image_size=args.image_size) for name in args.presets}
    table = format_table(estimate_rows(configs, args.batch_size, args.num_gpus), args.batch_size)
    logger.info(table)
    return table


if __name__ == "__main__":
    main()
