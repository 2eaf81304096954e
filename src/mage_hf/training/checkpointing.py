"""Checkpoints of a custom Accelerate loop: model weights as safetensors, optimizer / scheduler states
loaded back with `torch.load(weights_only=True)`, progress as JSON. Written by the main process only."""

from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from .arguments import CHECKPOINT_PATTERN

PROGRESS_FILE = "progress.json"


def save_training_checkpoint(path: str, modules: dict, optimizers: dict, schedulers: dict, progress: dict,
                             tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write `path/{name}.safetensors` per module state dict, `{name}.pt` per optimizer/scheduler,
    `progress.json` and `progress.safetensors` (extra tensors such as codebook counts)."""
    os.makedirs(path, exist_ok=True)
    for name, state_dict in modules.items():
        tensors_cpu = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors_cpu, os.path.join(path, f"{name}.safetensors"))
    for name, obj in {**optimizers, **schedulers}.items():
        torch.save(obj.state_dict(), os.path.join(path, f"{name}.pt"))
    if tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.path.join(path, "progress.safetensors"))
    with open(os.path.join(path, PROGRESS_FILE), "w", encoding="utf-8") as handle:
        json.dump(progress, handle, indent=2)


def load_training_checkpoint(path: str, modules: dict, optimizers: dict, schedulers: dict) -> tuple[dict, dict]:
    """Load what `save_training_checkpoint` wrote into the given objects; returns (progress, tensors)."""
    if not os.path.isfile(os.path.join(path, PROGRESS_FILE)):
        raise ValueError(f"`resume_from_checkpoint` {path!r} is not a checkpoint of this script (no {PROGRESS_FILE})")
    for name, module in modules.items():
        module.load_state_dict(load_file(os.path.join(path, f"{name}.safetensors")))
    for name, obj in {**optimizers, **schedulers}.items():
        obj.load_state_dict(torch.load(os.path.join(path, f"{name}.pt"), map_location="cpu", weights_only=True))
    tensors_path = os.path.join(path, "progress.safetensors")
    tensors = load_file(tensors_path) if os.path.isfile(tensors_path) else {}
    with open(os.path.join(path, PROGRESS_FILE), encoding="utf-8") as handle:
        return json.load(handle), tensors


def rotate_checkpoints(output_dir: str, save_total_limit: int | None) -> None:
    """Delete the oldest `checkpoint-<step>` folders beyond `save_total_limit`."""
    if not save_total_limit or save_total_limit < 1:
        return
    found = sorted(
        (int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))
    )
    for _, name in found[:-save_total_limit]:
        shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
