"""`MagePretrainingTrainer`: `Trainer` for MAGE pre-training (and MAGE-C).

- weight decay on the parameters the original decays (see `optim.py`);
- MAGE's masking sampled inside `MageForMaskedImageModeling.forward` from a generator seeded, per step and per
  process, from the global torch RNG, which the Trainer saves in every checkpoint and restores on resume: a
  resumed run draws the same masks as the uninterrupted one;
- batches of `pixel_values` (B, 3, S, S) or pre-tokenized `image_token_ids` (B, N); with two views per image
  ((B, 2, ...)) and a contrastive head on the model, MAGE-C's InfoNCE term is added to the token loss.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from .contrastive import info_nce_loss
from .data import TOKEN_IDS_COLUMN
from .optim import decay_parameter_names

# Mixes the process index into the per-step seed (an odd 64-bit constant: distinct seeds per process).
_PROCESS_SEED_STRIDE = 0x9E3779B97F4A7C15


class MagePretrainingTrainer(Trainer):
    """`Trainer` whose loss is MAGE's masked-token loss (+ `contrastive_loss_weight` x InfoNCE for MAGE-C)."""

    # `compute_loss` returns a per-batch mean: let the Trainer divide it over gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metric_sums: dict[str, float] = {}
        self._metric_counts: dict[str, int] = {}

    def get_decay_parameter_names(self, model) -> list[str]:
        return decay_parameter_names(model)

    def masking_generator(self) -> torch.Generator:
        """A CPU generator for this step's masks: one draw from the (checkpointed) global torch RNG, made
        distinct per process so that processes do not mask their images identically."""
        seed = int(torch.randint(0, 2**62, (1,)).item())
        mixed = (seed + self.args.process_index * _PROCESS_SEED_STRIDE) % 2**63
        return torch.Generator().manual_seed(mixed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        key = TOKEN_IDS_COLUMN if TOKEN_IDS_COLUMN in inputs else "pixel_values"
        images = inputs[key]
        class_labels = inputs.get("class_labels")
        single_ndim = 2 if key == TOKEN_IDS_COLUMN else 4
        num_views = images.shape[1] if images.ndim == single_ndim + 1 else 1
        if num_views > 1:
            # (B, V, ...) -> (V * B, ...), view-major: one forward pass (what DDP synchronises) for all views.
            images = images.transpose(0, 1).reshape(-1, *images.shape[2:])
            class_labels = class_labels.repeat(num_views) if class_labels is not None else None
        outputs = model(**{key: images}, class_labels=class_labels, generator=self.masking_generator())
        loss = outputs.loss
        head = getattr(self.accelerator.unwrap_model(model), "contrastive_head", None)
        if head is not None:
            if num_views != 2:
                raise ValueError(f"the contrastive loss needs 2 views per image, got {num_views}")
            config = self.accelerator.unwrap_model(model).config
            first, second = head(outputs.pooler_output).chunk(2)
            contrastive = info_nce_loss(first, second, config.contrastive_temperature)
            self._record(token_loss=outputs.loss, contrastive_loss=contrastive)
            loss = loss + config.contrastive_loss_weight * contrastive
            outputs.contrastive_loss = contrastive
        return (loss, outputs) if return_outputs else loss

    def _record(self, **values: torch.Tensor) -> None:
        for name, value in values.items():
            self._metric_sums[name] = self._metric_sums.get(name, 0.0) + float(value.detach())
            self._metric_counts[name] = self._metric_counts.get(name, 0) + 1

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            for name, total in self._metric_sums.items():
                logs[name] = round(total / self._metric_counts[name], 6)
            self._metric_sums, self._metric_counts = {}, {}
        super().log(logs, *args, **kwargs)
