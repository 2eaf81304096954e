"""Building blocks of the MaskGIT/MAGE VQGAN, in plain PyTorch.

Both the diffusers `MageVQModel` and the transformers models (which carry the VQ encoder so they can
tokenize pixels on their own) are made of these modules, so the two always compute the same thing.

The layout follows the VQGAN that MAGE ships (``vqgan_jax_strongaug.ckpt``), including its quirks:

- no attention blocks anywhere;
- the encoder downsamples by 2x2 average pooling, the decoder upsamples by nearest neighbour + 3x3 conv;
- the residual blocks' convolutions have no bias, and when the channel count changes the 1x1 shortcut
  is applied to the block's *output* (``h + shortcut(h)``), not to its input;
- GroupNorm(32 groups, eps 1e-6) and swish everywhere;
- no ``quant_conv``/``post_quant_conv``: the codebook lives in the encoder's output space.

Parameter names match the original checkpoint, so conversion is a prefix change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _group_norm(num_channels: int, num_groups: int, eps: float) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=num_groups, num_channels=num_channels, eps=eps, affine=True)


class VQResnetBlock(nn.Module):
    """Residual block: norm-swish-conv twice; a 1x1 conv on the output when channels change."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, eps: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels, num_groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = _group_norm(out_channels, num_groups, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        # The original applies this to the block's output (`h`), so it maps out->out channels and the
        # block's input never reaches the sum. Reproduced deliberately; checkpoints depend on it.
        self.nin_shortcut = (
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False) if in_channels != out_channels else None
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = hidden
        hidden = self.conv1(F.silu(self.norm1(hidden)))
        hidden = self.conv2(F.silu(self.norm2(hidden)))
        if self.nin_shortcut is not None:
            residual = self.nin_shortcut(hidden)
        return residual + hidden


class VQUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden, scale_factor=2.0, mode="nearest"))


class VQDownsample(nn.Module):
    """2x2 average pooling (the MAGE VQGAN has no strided conv)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(hidden, kernel_size=2, stride=2)


class VQMidBlock(nn.Module):
    """Two residual blocks at the lowest resolution (`mid.block_1`, `mid.block_2` in the original)."""

    def __init__(self, channels: int, num_groups: int, eps: float):
        super().__init__()
        self.block_1 = VQResnetBlock(channels, channels, num_groups, eps)
        self.block_2 = VQResnetBlock(channels, channels, num_groups, eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(hidden))


class VQEncoderStage(nn.Module):
    """One resolution level of the encoder: `num_res_blocks` residual blocks, then 2x pooling except at the last
    level (`down.{level}` in the original)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, downsample: bool, num_groups: int,
                 eps: float):
        super().__init__()
        self.block = nn.ModuleList(
            VQResnetBlock(in_channels if index == 0 else out_channels, out_channels, num_groups, eps)
            for index in range(num_res_blocks)
        )
        if downsample:
            self.downsample = VQDownsample()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            hidden = block(hidden)
        return self.downsample(hidden) if hasattr(self, "downsample") else hidden


class VQDecoderStage(nn.Module):
    """One resolution level of the decoder: `num_res_blocks` residual blocks, then nearest 2x upsampling + conv
    except at the top level (`up.{level}` in the original)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool, num_groups: int,
                 eps: float):
        super().__init__()
        self.block = nn.ModuleList(
            VQResnetBlock(in_channels if index == 0 else out_channels, out_channels, num_groups, eps)
            for index in range(num_res_blocks)
        )
        if upsample:
            self.upsample = VQUpsample(out_channels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            hidden = block(hidden)
        return self.upsample(hidden) if hasattr(self, "upsample") else hidden


class _CheckpointedStages(nn.Module):
    """Runs sub-modules through `_gradient_checkpointing_func` when gradients are on and checkpointing is enabled
    (diffusers' convention: `ModelMixin.enable_gradient_checkpointing` sets both attributes)."""

    gradient_checkpointing = False

    def _run(self, module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, hidden)
        return module(hidden)


class VQEncoder(_CheckpointedStages):
    """Pixels (batch, in_channels, H, W) -> latents (batch, latent_channels, H / 2**(L-1), W / 2**(L-1)).

    With gradient checkpointing on, each resolution level and the middle block are recomputed in the backward
    pass instead of keeping their activations.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        latent_channels: int,
        norm_num_groups: int,
        norm_eps: float,
    ):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, base_channels, kernel_size=3, padding=1, bias=False)
        self.down = nn.ModuleList()
        block_in = base_channels
        for level, multiplier in enumerate(channel_multipliers):
            block_out = base_channels * multiplier
            last = level == len(channel_multipliers) - 1
            self.down.append(
                VQEncoderStage(block_in, block_out, num_res_blocks, not last, norm_num_groups, norm_eps)
            )
            block_in = block_out
        self.mid = VQMidBlock(block_in, norm_num_groups, norm_eps)
        self.norm_out = _group_norm(block_in, norm_num_groups, norm_eps)
        self.conv_out = nn.Conv2d(block_in, latent_channels, kernel_size=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(pixel_values)
        for stage in self.down:
            hidden = self._run(stage, hidden)
        hidden = self._run(self.mid, hidden)
        return self.conv_out(F.silu(self.norm_out(hidden)))


class VQDecoder(_CheckpointedStages):
    """Latents (batch, latent_channels, h, w) -> pixels (batch, out_channels, h * 2**(L-1), w * 2**(L-1)).

    With gradient checkpointing on, the middle block and each resolution level are recomputed in the backward
    pass instead of keeping their activations.
    """

    def __init__(
        self,
        out_channels: int,
        base_channels: int,
        channel_multipliers: tuple[int, ...],
        num_res_blocks: int,
        latent_channels: int,
        norm_num_groups: int,
        norm_eps: float,
    ):
        super().__init__()
        block_in = base_channels * channel_multipliers[-1]
        self.conv_in = nn.Conv2d(latent_channels, block_in, kernel_size=3, padding=1)
        self.mid = VQMidBlock(block_in, norm_num_groups, norm_eps)
        # Stored lowest level first (index = resolution level), run from the deepest level up,
        # as in the original checkpoint layout.
        stages: list[nn.Module] = []
        for level in reversed(range(len(channel_multipliers))):
            block_out = base_channels * channel_multipliers[level]
            stages.insert(0, VQDecoderStage(block_in, block_out, num_res_blocks, level != 0, norm_num_groups, norm_eps))
            block_in = block_out
        self.up = nn.ModuleList(stages)
        self.norm_out = _group_norm(block_in, norm_num_groups, norm_eps)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        hidden = self._run(self.mid, self.conv_in(latents))
        for stage in reversed(self.up):
            hidden = self._run(stage, hidden)
        return self.conv_out(F.silu(self.norm_out(hidden)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup.

    The squared distance is computed as ``|z|^2 + |e|^2 - 2 z.e`` with one matmul, as the original does
    (same formula, so near-ties break the same way); no (pixels x codebook) one-hot matrix is built.
    Distances are always computed in float32, whatever the module's dtype, so token ids do not depend on it.
    The (pixels x codebook) distance matrix is built `max_distance_elements` entries at a time at most, so
    tokenizing a large batch does not need gigabytes of scratch memory.
    """

    # 2**24 float32 entries = 64 MiB of distances per chunk (a 256-image batch of 16x16 grids against 1024
    # codes is 2**26 entries).
    max_distance_elements: int = 2**24

    def __init__(self, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, codebook_dim)

    def nearest_code(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (batch, dim, h, w) -> code ids (batch, h * w), row-major over the grid."""
        batch, dim, height, width = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, dim).float()
        codebook = self.embedding.weight.float()
        codebook_norms = codebook.pow(2).sum(dim=1)
        if torch.compiler.is_compiling():
            # The chunk count depends on the batch size: one chunk keeps a traced graph valid for any batch.
            return self._nearest_rows(flat, codebook, codebook_norms).view(batch, height * width)
        rows_per_chunk = max(1, self.max_distance_elements // max(1, codebook.shape[0]))
        ids = [self._nearest_rows(chunk, codebook, codebook_norms) for chunk in flat.split(rows_per_chunk)]
        return (ids[0] if len(ids) == 1 else torch.cat(ids)).view(batch, height * width)

    @staticmethod
    def _nearest_rows(rows: torch.Tensor, codebook: torch.Tensor, codebook_norms: torch.Tensor) -> torch.Tensor:
        """Rows (n, dim), codebook (K, dim), its squared norms (K,) -> the nearest code of each row (n,)."""
        return (rows.pow(2).sum(dim=1, keepdim=True) + codebook_norms - 2 * (rows @ codebook.t())).argmin(dim=1)

    def lookup(self, token_ids: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Code ids (batch, h * w) -> latents (batch, dim, h, w)."""
        batch = token_ids.shape[0]
        return self.embedding(token_ids).view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()


# Settings of the VQGAN that MAGE ships (`vqgan_jax_strongaug.ckpt`): 256 px -> 16x16 tokens, 1024 codes.
DEFAULT_VQ_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "base_channels": 128,
    "channel_multipliers": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
    "latent_channels": 256,
    "codebook_size": 1024,
    "sample_size": 256,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
}


def vq_downsample_factor(channel_multipliers) -> int:
    """Pixels per token along one side: one 2x pooling between consecutive levels."""
    return 2 ** (len(channel_multipliers) - 1)


# Slack around [0, 1] for the range check: resampling and float rounding can overshoot by a few 1e-4.
PIXEL_RANGE_TOLERANCE = 1e-3


def check_pixel_values(pixel_values, in_channels: int, downsample_factor: int, check_range: bool = True) -> None:
    """Raise a ValueError naming `pixel_values` unless it is (batch, in_channels, H, W), finite, in [0, 1]
    (unless `check_range=False`) with H and W divisible by the tokenizer's downsampling factor.

    The value checks (finite, range) cost one min/max reduction and one host sync; they are skipped while
    `torch.compile` / `torch.export` trace the model, where a Python branch on tensor values cannot be traced.
    One NaN pixel would otherwise turn every token of the image into id 0 (NaN distances argmin to 0).
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != in_channels:
        raise ValueError(
            f"`pixel_values` must have shape (batch, {in_channels}, height, width), got {tuple(pixel_values.shape)}"
        )
    height, width = pixel_values.shape[-2:]
    if height % downsample_factor or width % downsample_factor:
        raise ValueError(
            f"`pixel_values` height and width must be multiples of {downsample_factor} (the tokenizer's "
            f"downsampling factor), got {height}x{width}"
        )
    if torch.compiler.is_compiling() or not pixel_values.numel():
        return
    # min/max propagate NaN and show +-inf, so one reduction checks finiteness and range (`torch.isfinite(x).all()`
    # would be a second, ~15x slower pass on CPU); `.item()` is the only host sync.
    low, high = pixel_values.aminmax()
    finite = torch.isfinite(low) & torch.isfinite(high)
    bad = ~finite
    if check_range:
        bad = bad | (low < -PIXEL_RANGE_TOLERANCE) | (high > 1 + PIXEL_RANGE_TOLERANCE)
    if not bad.item():
        return
    if not finite:
        raise ValueError(
            f"`pixel_values` must be finite, got {int((~torch.isfinite(pixel_values)).sum())} NaN or inf value(s)"
        )
    # MAGE's VQGAN takes pixels in [0, 1], not ImageNet-normalised or [-1, 1] values.
    raise ValueError(
        f"`pixel_values` must be in [0, 1] (no mean/std normalisation), got values in "
        f"[{float(low):.3f}, {float(high):.3f}]"
    )


class VQTokenizer(nn.Module):
    """The VQ encoder and codebook only: what a recognition model needs to turn pixels into token ids.

    Used inside the transformers models so that a `transformer/` folder alone works on pixels.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 128,
        channel_multipliers=(1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        latent_channels: int = 256,
        codebook_size: int = 1024,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        **unused_decoder_settings,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.downsample_factor = vq_downsample_factor(channel_multipliers)
        self.encoder = VQEncoder(
            in_channels, base_channels, tuple(channel_multipliers), num_res_blocks, latent_channels,
            norm_num_groups, norm_eps,
        )
        self.quantize = VectorQuantizer(codebook_size, latent_channels)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, check_range: bool = True) -> torch.Tensor:
        """Pixels (batch, C, H, W) -> token ids (batch, (H/f) * (W/f)), row-major.

        Pixels must be finite, and in [0, 1] unless `check_range=False` (models fed normalised pixels, see
        `MageConfig.image_mean`).
        """
        check_pixel_values(pixel_values, self.in_channels, self.downsample_factor, check_range=check_range)
        # Token ids are discrete: an autocast region around the model (bf16 training or inference) must not
        # flip near-ties, so the tokenizer runs in its own weights' dtype (float32 unless cast explicitly).
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            latents = self.encoder(pixel_values.to(self.quantize.embedding.weight.dtype))
            return self.quantize.nearest_code(latents)
