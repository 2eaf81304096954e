"""Worker for tests/test_fsdp2.py, launched by `python -m torch.distributed.run --nproc_per_node 2` (gloo, CPU).

Trains one tiny `MageForMaskedImageModeling` from the same initial weights twice, under DDP and under FSDP2, on the
same per-rank batches, dropout draws and masks, then writes into `--output_dir`:
- `rank<r>.json`: both loss curves (this rank's batch), facts about the sharded parameters, the largest
  difference between the FSDP2 and the DDP parameters after training;
- `fsdp_model/`: the FSDP2 model's full state dict written by `save_pretrained(state_dict=...)` (rank 0);
- `reference.safetensors`: fixed evaluation inputs and the DDP model's logits on them (rank 0).

`--wrapping mage` shards with `mage_hf.training.fsdp.shard_mage_model`; `--wrapping accelerate` with Accelerate's
own FSDP2 preparation (`fsdp2_prepare_model`), configured from the `FSDP_*` environment variables that
`accelerate launch --config_file examples/accelerate_fsdp.yaml` sets (the test computes and passes them).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import tiny_config_kwargs  # noqa: E402

from mage_hf import MageConfig, MageForMaskedImageModeling  # noqa: E402

BATCH_SIZE = 4  # images per process and step
LEARNING_RATE = 3e-3
MAX_GRAD_NORM = 1.0  # small enough to clip: the clipped norm is a reduction over shards under FSDP2


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--wrapping", choices=("mage", "accelerate"), default="mage")
    return parser.parse_args()


def batch(rank: int, step: int) -> torch.Tensor:
    """This process's (BATCH_SIZE, 3, 16, 16) images in [0, 1] for `step`."""
    return torch.rand(BATCH_SIZE, 3, 16, 16, generator=torch.Generator().manual_seed(1000 * rank + step))


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.05)


def train(model: torch.nn.Module, rank: int, steps: int) -> list[float]:
    """`steps` AdamW steps with gradient clipping; returns this rank's losses."""
    optimizer = make_optimizer(model)
    losses = []
    model.train()
    for step in range(steps):
        torch.manual_seed(10_000 + 100 * rank + step)  # dropout draws
        masks = torch.Generator().manual_seed(20_000 + 100 * rank + step)
        loss = model(pixel_values=batch(rank, step), generator=masks).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def full(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def shard(model: MageForMaskedImageModeling, wrapping: str) -> MageForMaskedImageModeling:
    if wrapping == "mage":
        from mage_hf.training.fsdp import shard_mage_model

        return shard_mage_model(model)
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment, as `Accelerator()` builds it
    # What `fsdp2_prepare_model` reads of an `Accelerator`; float32 (no mixed precision) to compare with DDP.
    accelerator = types.SimpleNamespace(
        state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None, parallelism_config=None,
        mixed_precision="no", device=torch.device("cpu"), is_main_process=dist.get_rank() == 0,
    )
    return fsdp2_prepare_model(accelerator, model)


def shard_units(model: torch.nn.Module) -> list[str]:
    from torch.distributed.fsdp import FSDPModule

    return [name or "<root>" for name, module in model.named_modules() if isinstance(module, FSDPModule)]


def main():
    args = parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    model = MageForMaskedImageModeling(MageConfig(**tiny_config_kwargs()))
    initial = copy.deepcopy(model.state_dict())
    fsdp_model = copy.deepcopy(model)

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp_losses = train(ddp, rank, args.steps)

    shard(fsdp_model, args.wrapping)
    embedding = fsdp_model.get_input_embeddings().weight
    vq_params = dict(fsdp_model.mage.vqvae.named_parameters())
    facts = {
        "units": shard_units(fsdp_model),
        "embedding_is_dtensor": isinstance(embedding, DTensor),
        "embedding_placements": [str(p) for p in embedding.placements] if isinstance(embedding, DTensor) else None,
        "embedding_local_shape": list(embedding.to_local().shape) if isinstance(embedding, DTensor) else None,
        "embedding_full_shape": list(embedding.shape),
        "vq_all_dtensor": all(isinstance(p, DTensor) for p in vq_params.values()),
        "vq_any_trainable": any(p.requires_grad for p in vq_params.values()),
    }
    fsdp_losses = train(fsdp_model, rank, args.steps)

    ddp_params = dict(ddp.module.named_parameters())
    differences = {name: (full(p.detach()) - ddp_params[name].detach()).abs().max().item()
                   for name, p in fsdp_model.named_parameters()}
    name = "mage.embeddings.word_embeddings.weight"
    embedding_update = (ddp_params[name].detach() - initial[name]).abs().max().item()
    vq_unchanged = all(torch.equal(full(p.detach()), initial[f"mage.vqvae.{n}"]) for n, p in vq_params.items())

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state_dict = get_model_state_dict(fsdp_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state_dict_size = len(state_dict)  # save_pretrained empties the dict it writes
    if rank == 0:
        fsdp_model.save_pretrained(args.output_dir / "fsdp_model", state_dict=state_dict)
        reference = ddp.module.eval()
        pixel_values = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7))
        noise = torch.rand(2, reference.config.num_tokens, generator=torch.Generator().manual_seed(8))
        with torch.no_grad():
            logits = reference(pixel_values=pixel_values, noise=noise, mask_ratio=0.75).logits
        from safetensors.torch import save_file

        save_file({"pixel_values": pixel_values, "noise": noise, "logits": logits},
                  args.output_dir / "reference.safetensors")
    report = {
        "world_size": dist.get_world_size(), "ddp_losses": ddp_losses, "fsdp_losses": fsdp_losses,
        "max_parameter_difference": max(differences.values()),
        "embedding_difference": differences[name], "embedding_update": embedding_update,
        "vq_unchanged": vq_unchanged, "state_dict_size": state_dict_size, **facts,
    }
    (args.output_dir / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
