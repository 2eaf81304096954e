"""Few-shot fine-tuning of `MageForImageClassification` (LP-FT): a linear-probe warm start of the head, then
fine-tuning of the whole classifier with a small learning rate.

With K labelled images per class the full-data recipe (near-zero head, lr 3e-5 at batch 32, mixup, cutmix, random
resized crops, label smoothing) does not fit the few images in the few steps they give: the train loss stays at
chance. Instead:

1. linear probe: the features the head reads (every image token after the final `norm`, flattened, in the
   few-shot recipe; or the class token, or `fc_norm` of the mean image token) are computed for the support
   images, standardised, and a multinomial logistic regression is fitted on them in closed form (L-BFGS,
   scikit-learn's objective `C * sum(losses) + |W|^2 / 2`). The standardisation is folded into the head (token
   features) or into the affine parameters of the pooling norm (pooled features), so the classifier computes
   exactly the fitted probe before any gradient step;
2. fine-tuning: every parameter of the encoder and head, AdamW with a small learning rate, a short warm-up and a
   cosine decay, horizontal flips only, no mixup, cutmix or label smoothing (`FEW_SHOT_RECIPE`, measured in
   `examples/README.md`). A run takes minutes, so it saves no checkpoints unless `--save_strategy` asks for them;
3. weight-space ensembling (WiSE-FT, Wortsman et al. 2022): the saved classifier is the average
   `(1 - alpha) * warm start + alpha * fine-tuned` of every weight (`interpolate_weights`, alpha 0.5).

The recipe's head reads the image tokens (`classifier_pooling="tokens"`), not a pooled feature: with 1-10 images
per class, a linear map of the token grid keeps the layout that pooling averages away. On the embedded model a
frozen probe of the tokens beats one of the class token on Fashion-MNIST validation images, and beats it by far
on images unlike its pre-training data (digits, colour emoji; measured in `examples/README.md`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import logging

from ..embeddings import POOLING_FEATURE_KIND, select_features

logger = logging.get_logger(__name__)

# `examples/finetune.py --recipe auto` picks the few-shot recipe at or below this many images per class.
FEW_SHOT_MAX_SHOTS = 16

# Defaults of the few-shot recipe, as `examples/finetune.py` argument names (an explicit flag still wins).
# Chosen by the sweep in `examples/README.md` (Fashion-MNIST, embedded default model, validation images).
FEW_SHOT_RECIPE = {
    "classifier_pooling": "tokens",
    "linear_probe_warm_start": True,
    "wise_ft_alpha": 0.5,
    "linear_probe_inverse_regularization": 0.1,
    "learning_rate": 3e-5,
    "base_learning_rate": 0.0,
    "num_train_epochs": 30,
    "logging_steps": 10,
    "per_device_train_batch_size": 50,
    "per_device_eval_batch_size": 256,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.05,
    "layer_decay": 1.0,
    "drop_path_rate": 0.0,
    "label_smoothing": 0.0,
    "mixup": 0.0,
    "cutmix": 0.0,
    "random_crop": False,
    "horizontal_flip": True,
    "save_strategy": "no",
}


def pooling_norm(model: nn.Module) -> nn.LayerNorm:
    """The LayerNorm whose output the classifier reads: `fc_norm` for `classifier_pooling="mean"`, the final
    `norm` for `"cls"` and `"tokens"`."""
    name = "fc_norm" if model.config.classifier_pooling == "mean" else "norm"
    norm = getattr(model.mage, name, None)
    if not isinstance(norm, nn.LayerNorm) or not norm.elementwise_affine:
        raise ValueError(f"the linear-probe warm start needs an affine `mage.{name}` LayerNorm, got {type(norm).__name__}")
    return norm


@torch.no_grad()
def pooled_features(model: nn.Module, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, 3, S, S) pixels -> (N, D) float32: the classifier's input features (eval mode, no dropout)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    kind = POOLING_FEATURE_KIND[model.config.classifier_pooling]
    chunks = []
    for start in range(0, len(pixel_values), batch_size):
        outputs = model.mage(pixel_values=pixel_values[start : start + batch_size].to(device))
        chunks.append(select_features(outputs, kind).float())
    model.train(was_training)
    return torch.cat(chunks)


def fit_logistic_regression(features: torch.Tensor, labels: torch.LongTensor, num_classes: int,
                            inverse_regularization: float = 0.1, max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS in float64: minimises `C * sum of cross-entropies + |W|^2 / 2`
    (scikit-learn's `LogisticRegression(C)`), no penalty on the bias.

    features (N, D), labels (N,) in [0, num_classes) -> weight (num_classes, D), bias (num_classes,) float32.
    """
    if inverse_regularization <= 0:
        raise ValueError(f"`inverse_regularization` must be positive, got {inverse_regularization}")
    x, y = features.detach().double().cpu(), labels.detach().long().cpu()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y, reduction="sum") * inverse_regularization
        loss = loss + 0.5 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach().t().float().contiguous(), bias.detach().float()


@torch.no_grad()
def warm_start_classifier(model: nn.Module, pixel_values: torch.Tensor, labels: torch.LongTensor,
                          inverse_regularization: float = 0.1, batch_size: int = 256) -> float:
    """Linear-probe warm start of a `MageForImageClassification` on support images, in place.

    pixel_values (N, 3, S, S) in [0, 1] (the evaluation view: no augmentation), labels (N,). Fits a logistic
    regression on the standardised support features and folds the standardisation into the pooling norm's
    affine parameters (`"mean"`, `"cls"`) or into the head (`"tokens"`), so the classifier computes the fitted
    probe. Returns the warm-started classifier's accuracy on the support images.
    """
    if labels.numel() != len(pixel_values):
        raise ValueError(f"`labels` must have one entry per image ({len(pixel_values)}), got {labels.numel()}")
    features = pooled_features(model, pixel_values, batch_size)
    # One image per class (or a constant feature) has zero spread: keep those dimensions unscaled.
    mean = features.mean(0)
    std = features.std(0) if len(features) > 1 else torch.ones_like(mean)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    standardised = (features - mean) / std
    weight, bias = fit_logistic_regression(standardised, labels, model.config.num_labels, inverse_regularization)
    weight, bias = weight.to(features.device), bias.to(features.device)
    if model.config.classifier_pooling == "tokens":
        # One norm is shared by every token position, so the per-position standardisation goes into the head.
        head_weight = weight / std
        model.classifier.weight.copy_(head_weight.to(model.classifier.weight))
        model.classifier.bias.copy_((bias - head_weight @ mean).to(model.classifier.bias))
    else:
        norm = pooling_norm(model)
        norm.weight.div_(std.to(norm.weight))
        norm.bias.sub_(mean.to(norm.bias)).div_(std.to(norm.bias))
        model.classifier.weight.copy_(weight.to(model.classifier.weight))
        model.classifier.bias.copy_(bias.to(model.classifier.bias))
    logits = standardised @ weight.t() + bias
    accuracy = float((logits.argmax(1).cpu() == labels.cpu()).float().mean())
    logger.info(f"linear-probe warm start on {len(labels)} images: support accuracy {100 * accuracy:.1f}%")
    return accuracy


def weights_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every floating-point entry of `model.state_dict()` (the anchor of `interpolate_weights`)."""
    return {name: value.detach().clone() for name, value in model.state_dict().items() if value.is_floating_point()}


@torch.no_grad()
def interpolate_weights(model: nn.Module, anchor: dict[str, torch.Tensor], alpha: float) -> None:
    """WiSE-FT, in place: every floating-point weight becomes `(1 - alpha) * anchor + alpha * current`.

    `anchor` is a `weights_snapshot` of the same architecture (the warm-started classifier); alpha 1 keeps the
    fine-tuned weights, alpha 0 restores the anchor. Every process of a data-parallel run holds the same weights
    and the same anchor, so they stay identical.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1] (1 = the fine-tuned weights), got {alpha}")
    state = model.state_dict()
    missing = sorted(name for name, value in state.items() if value.is_floating_point() and name not in anchor)
    if missing:
        raise ValueError(f"`anchor` lacks weights of the model: {missing[:3]}")
    seen = set()
    for name, value in state.items():
        # Tied weights share storage: mix each storage once.
        if value.is_floating_point() and value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            value.lerp_(anchor[name].to(value), 1.0 - alpha)
