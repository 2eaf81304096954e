"""`MageFinetuningTrainer`: `Trainer` for `MageForImageClassification` as the original fine-tuning: layer-wise
lr decay parameter groups, label smoothing, and mixup/cutmix with soft targets (random draws seeded from the
global torch RNG, which checkpoints save, so resumed runs mix the same way)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F
from transformers import Trainer

from .mixup import MixupCutmix
from .optim import param_groups_layer_decay


class MageFinetuningTrainer(Trainer):
    """Args beyond `Trainer`'s: `layer_decay` (1 = off), `mixup` (a `MixupCutmix`, or None), `label_smoothing`."""

    # `compute_loss` returns a per-batch mean: let the Trainer divide it over gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, layer_decay: float = 0.65, mixup: MixupCutmix | None = None,
                 label_smoothing: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay
        self.mixup = mixup
        self.label_smoothing = label_smoothing

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            groups = param_groups_layer_decay(model, self.args.weight_decay, self.layer_decay,
                                              model.config.num_hidden_layers)
            for group in groups:
                group["lr"] = self.args.learning_rate * group["lr_scale"]
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, eps=self.args.adam_epsilon,
                                               betas=(self.args.adam_beta1, self.args.adam_beta2))
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values, labels = inputs["pixel_values"], inputs["labels"]
        if model.training and self.mixup is not None and self.mixup.active:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
            pixel_values, targets = self.mixup(pixel_values, labels, rng)
            outputs = model(pixel_values=pixel_values)
            loss = torch.sum(-targets * F.log_softmax(outputs.logits.float(), dim=-1), dim=-1).mean()
        else:
            outputs = model(pixel_values=pixel_values)
            smoothing = self.label_smoothing if model.training else 0.0
            loss = F.cross_entropy(outputs.logits.float(), labels, label_smoothing=smoothing)
        return (loss, outputs) if return_outputs else loss
