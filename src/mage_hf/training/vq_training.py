"""Training a `MageVQModel`: reconstruction + codebook losses, an optional patch-GAN, codebook-usage
statistics and dead-code restarts.

Shapes: B = batch, D = latent channels, h x w = token grid, K = codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..modeling_vqvae import MageVQModel


@dataclass
class VQStepOutput:
    """What one forward pass of `VQTrainingModule` returns.

    Args:
        reconstruction: (B, C, H, W) raw decoder output.
        latents: (B, D, h, w) encoder output before quantization.
        codes: (B, D, h, w) the chosen codebook vectors (gradient flows to the codebook).
        token_ids: (B, h * w) chosen code ids.
    """

    reconstruction: torch.Tensor
    latents: torch.Tensor
    codes: torch.Tensor
    token_ids: torch.LongTensor


class VQTrainingModule(nn.Module):
    """Wraps a `MageVQModel` so that a single `forward` (what DDP/FSDP synchronise) runs encode, quantize
    (straight-through) and decode."""

    def __init__(self, vqvae: MageVQModel):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, pixel_values: torch.Tensor) -> VQStepOutput:
        latents = self.vqvae.encode(pixel_values).latents
        quantized, token_ids = self.vqvae.quantize_latents(latents)
        codes = self.vqvae.quantize.lookup(token_ids, *latents.shape[-2:]).to(latents.dtype)
        reconstruction = self.vqvae.decode(quantized).sample
        return VQStepOutput(reconstruction, latents, codes, token_ids)


@dataclass
class VQLossWeights:
    """Weights of the tokenizer losses (VQGAN: codebook 1, commitment `beta` 0.25)."""

    l1: float = 1.0
    l2: float = 1.0
    codebook: float = 1.0
    commitment: float = 0.25
    perceptual: float = 0.0
    gan: float = 0.1


def vq_losses(step: VQStepOutput, pixel_values: torch.Tensor, weights: VQLossWeights,
              perceptual_model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The generator-side losses (GAN term excluded) as a dict of scalars; `"loss"` is their weighted sum.

    codebook = |sg(z) - e|^2 moves the codes towards the encoder outputs; commitment = |z - sg(e)|^2 keeps the
    encoder near its codes.
    """
    reconstruction = step.reconstruction.float()
    target = pixel_values.float()
    losses = {
        "l1": (reconstruction - target).abs().mean(),
        "l2": F.mse_loss(reconstruction, target),
        "codebook": F.mse_loss(step.codes.float(), step.latents.detach().float()),
        "commitment": F.mse_loss(step.latents.float(), step.codes.detach().float()),
    }
    if perceptual_model is not None and weights.perceptual > 0:
        losses["perceptual"] = perceptual_model(reconstruction, target).mean()
    losses["loss"] = sum(getattr(weights, name) * value for name, value in losses.items())
    return losses


class PatchDiscriminator(nn.Module):
    """A PatchGAN (pix2pix/VQGAN style): images (B, C, H, W) -> real/fake logits (B, 1, H', W').

    `num_layers` stride-2 convolutions (GroupNorm + LeakyReLU after all but the first), then two stride-1
    convolutions. GroupNorm rather than BatchNorm so real and fake batches can share one forward pass.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3, norm_num_groups: int = 8):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for index in range(1, num_layers + 1):
            out_channels = base_channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(min(norm_num_groups, out_channels), out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Pixels in [0, 1] are centred so the first layer sees zero-mean input.
        return self.layers(pixel_values * 2 - 1)


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean()


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.float().mean()


def codebook_usage(code_counts: torch.Tensor) -> dict[str, float]:
    """Usage statistics from per-code counts (K,): `perplexity` = exp(entropy of the usage distribution)
    (K when every code is used equally) and `used_fraction` = share of codes used at least once."""
    counts = code_counts.float()
    total = counts.sum().clamp_min(1.0)
    probs = counts / total
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return {"perplexity": float(entropy.exp()), "used_fraction": float((counts > 0).float().mean())}


@torch.no_grad()
def restart_dead_codes(codebook: nn.Embedding, dead: torch.BoolTensor, candidates: torch.Tensor,
                       generator: torch.Generator, optimizer: torch.optim.Optimizer | None = None,
                       noise_std: float = 1e-3) -> int:
    """Re-seed the codes where `dead` (K,) is True with random rows of `candidates` (M, D) (encoder outputs of
    the current batch), plus a little noise so duplicates separate. Adam moments of re-seeded rows are zeroed.

    `generator` (CPU) must be seeded identically on every process so all copies of the codebook stay equal.
    Returns the number of codes restarted.
    """
    dead_ids = dead.nonzero().flatten()
    if dead_ids.numel() == 0:
        return 0
    picks = torch.randint(0, candidates.shape[0], (dead_ids.numel(),), generator=generator)
    chosen = candidates[picks.to(candidates.device)].float()
    scale = chosen.std().clamp_min(1e-6) * noise_std
    noise = torch.randn(chosen.shape, generator=generator).to(chosen.device) * scale
    weight = codebook.weight
    weight[dead_ids.to(weight.device)] = (chosen + noise).to(weight.dtype).to(weight.device)
    if optimizer is not None and weight in optimizer.state:
        for value in optimizer.state[weight].values():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                value[dead_ids.to(value.device)] = 0
    return int(dead_ids.numel())


def flatten_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B * h * w, D), the rows `restart_dead_codes` draws from."""
    return latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


def load_perceptual_model(path: str | None, weight: float) -> nn.Module | None:
    """A perceptual distance `fn(reconstruction, target) -> (B,)` (images in [0, 1]) from a local TorchScript
    file, e.g. LPIPS exported with `torch.jit.script`. Nothing is downloaded."""
    if weight <= 0:
        return None
    if path is None:
        raise ValueError(
            "`perceptual_weight` > 0 needs `perceptual_model`: a local TorchScript file computing a perceptual "
            "distance (e.g. LPIPS exported with torch.jit.script). Weights are never downloaded; set "
            "`--perceptual_weight 0` to train without it."
        )
    try:
        model = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        raise ValueError(f"`perceptual_model` {path!r} is not a loadable TorchScript file: {error}") from error
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
