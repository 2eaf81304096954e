"""`MageScheduler`: MAGE's (MaskGIT-style) iterative decoding of token grids.

One step, as in the original `gen_img_uncond.py`:

1. sample every token from softmax(logits / temperature) over the codebook; already-known tokens are kept;
2. ratio = (step + 1) / T; the number of tokens left masked is floor(n0 * schedule(ratio)) (float64),
   clamped to [1, unknown - 1], where n0 is the number of unknown tokens at the start;
3. confidence = log p(sampled) + choice_temperature * (1 - ratio) * Gumbel noise, +inf for known tokens;
4. tokens whose confidence is <= the cut-off (the mask_len-th smallest) are masked again.

After the last step `pred_original_sample` holds the complete grid (the original decodes `sampled_ids`).

diffusers' `AmusedScheduler` differs on purpose-relevant points (it uses `<` instead of `<=`, clamps
probabilities, does not clamp the count to keep one token per step, and masks on a different schedule), so it
is not reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

MASK_SCHEDULES = ("cosine", "linear", "square", "sqrt")


def mask_schedule(ratio: float, schedule: str = "cosine") -> float:
    """Fraction of the initially unknown tokens still masked after `ratio` of the steps (float64)."""
    if schedule == "cosine":
        return math.cos(math.pi / 2.0 * ratio)
    if schedule == "linear":
        return 1.0 - ratio
    if schedule == "square":
        return 1.0 - ratio**2
    if schedule == "sqrt":
        return 1.0 - math.sqrt(ratio)
    raise ValueError(f"`mask_schedule` must be one of {MASK_SCHEDULES}, got {schedule!r}")


def _split_generators(generator, batch_size: int) -> list | None:
    """A list of per-row generators (checked against the batch size), or None for one shared generator."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators; expected one per image ({batch_size})"
            )
        return list(generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or a list of them, got {type(generator).__name__}")
    return None


def _uniform(shape, generator, device) -> torch.Tensor:
    """Uniform [0, 1) noise; with a list of generators, row i comes from generator i alone."""
    per_row = _split_generators(generator, shape[0])
    if per_row is not None:
        return torch.stack([torch.rand(shape[1:], generator=g, device=g.device) for g in per_row]).to(device)
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, generator=None) -> torch.LongTensor:
    """Draw one id per position from softmax(logits / temperature): (B, N, K) -> (B, N)."""
    return sample_from_probs(torch.softmax(logits.float() / temperature, dim=-1), generator)


def sample_from_probs(probs: torch.Tensor, generator=None) -> torch.LongTensor:
    """Draw one id per position from probabilities (B, N, K) -> (B, N); per-row generators as `_uniform`."""
    batch, length, classes = probs.shape
    per_row = _split_generators(generator, batch)
    if per_row is not None:
        draws = [torch.multinomial(probs[i].to(g.device), 1, generator=g).to(probs.device) for i, g in enumerate(per_row)]
        return torch.stack(draws).view(batch, length)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.view(-1, classes).to(generator.device), 1, generator=generator).to(probs.device).view(batch, length)
    return torch.multinomial(probs.view(-1, classes), 1, generator=generator).view(batch, length)


def gumbel_noise(shape, generator, device) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(U)), float32."""
    uniform = _uniform(shape, generator, device).clamp_min(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(uniform))


def _check_temperatures(choice_temperature: float | None, temperature: float | None = None) -> None:
    if choice_temperature is not None and not choice_temperature >= 0:
        raise ValueError(f"`choice_temperature` must be >= 0, got {choice_temperature!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}")


@dataclass
class MageSchedulerOutput(BaseOutput):
    """Output of `MageScheduler.step`.

    Args:
        prev_sample: (B, N) token ids for the next step, `mask_token_id` where still masked.
        pred_original_sample: (B, N) the complete grid sampled at this step (known tokens kept).
        num_masked: (B,) tokens left masked in `prev_sample`.
    """

    prev_sample: torch.LongTensor
    pred_original_sample: torch.LongTensor
    num_masked: torch.LongTensor


class MageScheduler(SchedulerMixin, ConfigMixin):
    """MAGE's iterative decoding (see the module docstring for the exact rule).

    Args:
        mask_token_id: the id marking an unknown token (the vocabulary's last id; 2024 for the original).
        mask_schedule: how many tokens stay masked after each step: `"cosine"` (the original), `"linear"`,
            `"square"` or `"sqrt"`.
        choice_temperature: scale of the Gumbel noise on the confidence, annealed by (1 - ratio). The original's
            README uses 6.0 for ViT-B with 20 steps; its script defaults to 4.5.
        temperature: sampling temperature of the token distribution (1.0 in the original).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        mask_token_id: int = 2024,
        mask_schedule: str = "cosine",
        choice_temperature: float = 4.5,
        temperature: float = 1.0,
    ):
        if mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"`mask_schedule` must be one of {MASK_SCHEDULES}, got {mask_schedule!r}")
        _check_temperatures(choice_temperature, temperature)
        self.num_inference_steps: int | None = None
        self.timesteps: torch.LongTensor | None = None
        self._initial_unknown: torch.LongTensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Steps are numbered 0 .. T-1 (`timesteps` holds the step index)."""
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}")
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps, device=device)
        self._initial_unknown = None

    def num_masked_after_step(self, step: int, initial_unknown: int, unknown_now: int) -> int:
        """Tokens left masked after `step` (0-based): floor(n0 * schedule((step+1)/T)), clamped to [1, unknown-1]."""
        ratio = (step + 1) / self.num_inference_steps
        target = math.floor(initial_unknown * mask_schedule(ratio, self.config.mask_schedule))
        return max(1, min(unknown_now - 1, target))

    def masked_count_schedule(self, num_tokens: int, num_inference_steps: int | None = None) -> list[int]:
        """Tokens left masked after each step when decoding `num_tokens` unknown tokens (no ties)."""
        if num_inference_steps is not None:
            self.set_timesteps(num_inference_steps)
        counts, unknown = [], num_tokens
        for step in range(self.num_inference_steps):
            unknown = self.num_masked_after_step(step, num_tokens, unknown)
            counts.append(unknown)
        return counts

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.LongTensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        choice_temperature: float | None = None,
        return_dict: bool = True,
    ) -> MageSchedulerOutput | tuple:
        """One decoding step.

        Args:
            model_output: (B, N, K) logits over the codebook for the image tokens.
            timestep: the step index (0 .. T-1).
            sample: (B, N) current ids, `mask_token_id` where unknown.
            generator: one generator, or a list with one per image (each row then depends on its own alone).
            choice_temperature: overrides the config's value for this call.
        """
        if self.num_inference_steps is None:
            raise ValueError("call `set_timesteps(num_inference_steps)` before `step`")
        step = int(timestep)
        if not 0 <= step < self.num_inference_steps:
            raise ValueError(f"`timestep` must be in [0, {self.num_inference_steps - 1}], got {step}")
        if sample.ndim != 2 or sample.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"`sample` must be integer token ids of shape (B, N), got {sample.dtype} {tuple(sample.shape)}")
        if model_output.ndim != 3 or model_output.shape[:2] != sample.shape:
            raise ValueError(
                f"`model_output` (B, N, K) {tuple(model_output.shape)} does not match `sample` (B, N) {tuple(sample.shape)}"
            )
        _check_temperatures(choice_temperature)
        choice_temperature = self.config.choice_temperature if choice_temperature is None else choice_temperature
        sample = sample.long()
        unknown = sample == self.config.mask_token_id
        unknown_now = unknown.sum(dim=1)
        if step == 0 or self._initial_unknown is None or self._initial_unknown.shape != unknown_now.shape:
            self._initial_unknown = unknown_now

        probs = torch.softmax(model_output.float(), dim=-1)
        # At temperature 1 the sampling distribution is `probs` itself (x / 1.0 is exact): one softmax, not two.
        if self.config.temperature == 1.0:
            sampled = sample_from_probs(probs, generator)
        else:
            sampled = sample_tokens(model_output, self.config.temperature, generator)
        sampled = torch.where(unknown, sampled, sample)

        ratio = (step + 1) / self.num_inference_steps
        fraction = mask_schedule(ratio, self.config.mask_schedule)
        # float64 floor as the original; per row so that partly known grids (inpainting) work too.
        target = torch.floor(self._initial_unknown.double() * fraction).long()
        mask_len = torch.maximum(torch.ones_like(target), torch.minimum(unknown_now - 1, target))
        mask_len = torch.where(unknown_now > 0, mask_len, 0)  # a fully known row stays as it is

        selected = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        noise = gumbel_noise(selected.shape, generator, selected.device)
        confidence = torch.log(selected) + choice_temperature * (1.0 - ratio) * noise
        # Known tokens can never be re-masked: +inf is representable in float32 whatever the model's dtype.
        confidence = torch.where(unknown, confidence, torch.full_like(confidence, float("inf")))
        cut_off = confidence.sort(dim=-1).values.gather(1, (mask_len - 1).clamp_min(0).unsqueeze(1))
        masking = (confidence <= cut_off) & (mask_len > 0).unsqueeze(1) & unknown
        prev_sample = torch.where(masking, self.config.mask_token_id, sampled)
        num_masked = masking.sum(dim=1)
        if not return_dict:
            return prev_sample, sampled, num_masked
        return MageSchedulerOutput(prev_sample=prev_sample, pred_original_sample=sampled, num_masked=num_masked)
