"""`MageVQModel`: the MaskGIT/MAGE VQGAN tokenizer as a diffusers model."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.autoencoders.vq_model import VQEncoderOutput
from diffusers.models.modeling_utils import ModelMixin

from .vq_layers import VectorQuantizer, VQDecoder, VQEncoder, check_pixel_values, vq_downsample_factor
from .weights_check import check_safetensors_folder


class MageVQModel(ModelMixin, ConfigMixin):
    r"""The VQGAN that turns images into MAGE's discrete tokens and back.

    Pixels are in [0, 1] (no mean/std normalisation). With the default settings (those of the original
    `vqgan_jax_strongaug.ckpt`), a 256x256 image becomes a 16x16 grid of ids in a 1024-entry codebook.

    Args:
        in_channels / out_channels: image channels in and out.
        base_channels: channels of the first level (`ch` in the original).
        channel_multipliers: per-level channel multipliers (`ch_mult`); one 2x pooling between levels.
        num_res_blocks: residual blocks per level.
        latent_channels: channels of the encoder output and of each codebook vector (`z_channels` = `embed_dim`).
        codebook_size: number of codebook entries (`n_embed`).
        sample_size: the image size the tokenizer was trained at (informational; any multiple of the
            downsampling factor works).
        norm_num_groups / norm_eps: GroupNorm settings (32 groups, eps 1e-6 in the original).

    Example:
        ```py
        >>> vq = MageVQModel.from_pretrained("path/to/pipeline", subfolder="vqvae")
        >>> token_ids = vq.tokenize(pixel_values)          # (batch, 256) for 256x256 images
        >>> images = vq.decode_tokens(token_ids).clamp(0, 1)
        ```
    """

    # `enable_gradient_checkpointing()` recomputes each encoder/decoder resolution level in the backward pass.
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        base_channels: int = 128,
        channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        latent_channels: int = 256,
        codebook_size: int = 1024,
        sample_size: int = 256,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if not isinstance(num_res_blocks, int) or num_res_blocks < 1:
            raise ValueError(f"`num_res_blocks` must be a positive integer, got {num_res_blocks!r}")
        for name, channels in (("base_channels", base_channels), ("latent_channels", latent_channels)):
            if channels % norm_num_groups:
                raise ValueError(f"`{name}` ({channels}) must be a multiple of `norm_num_groups` ({norm_num_groups})")
        if sample_size % vq_downsample_factor(channel_multipliers):
            raise ValueError(
                f"`sample_size` ({sample_size}) must be a multiple of the downsampling factor "
                f"{vq_downsample_factor(channel_multipliers)} implied by `channel_multipliers`"
            )
        layer_settings = dict(
            base_channels=base_channels,
            channel_multipliers=tuple(channel_multipliers),
            num_res_blocks=num_res_blocks,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
        )
        self.encoder = VQEncoder(in_channels=in_channels, **layer_settings)
        self.decoder = VQDecoder(out_channels=out_channels, **layer_settings)
        self.quantize = VectorQuantizer(codebook_size, latent_channels)
        # Opt-in fast decoding (`enable_fast_decode`); off by default so that decoding matches the original.
        self.fast_decode_dtype: torch.dtype | None = None
        self.fast_decode_channels_last = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs) -> "MageVQModel":
        """diffusers' loader; a truncated or corrupt local weights file fails with a ValueError naming the file and
        the reason (diffusers' own error names the file only)."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError) as error:
            folder = Path(os.fspath(pretrained_model_name_or_path or ""), kwargs.get("subfolder") or "")
            if folder.is_dir():
                try:
                    check_safetensors_folder(folder, recursive=False)
                except ValueError as bad_file:  # names the file and why it cannot be read
                    raise bad_file from error
            raise

    def enable_fast_decode(self, dtype: torch.dtype | None = torch.bfloat16, channels_last: bool = True) -> None:
        r"""Decode faster, at a small cost in exactness: the decoder runs under `torch.autocast(dtype)` (weights
        stay in their own dtype; `None` = no autocast) and/or on channels-last activations and weights.

        Encoding and tokenization are unaffected (token ids never change). On CPU, bfloat16 + channels-last
        decodes the ViT-B/256 VQGAN about 2.5x faster than float32, at a PSNR above 40 dB against the float32
        decode (checked by `tests/test_fast_paths.py` and printed by `benchmarks/bench.py`).
        """
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"`dtype` must be a floating torch.dtype or None, got {dtype!r}")
        self.fast_decode_dtype = dtype
        self.fast_decode_channels_last = bool(channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.decoder.to(memory_format=memory_format)

    def disable_fast_decode(self) -> None:
        """Back to the exact float32 decoder (contiguous weights, no autocast)."""
        self.enable_fast_decode(dtype=None, channels_last=False)

    @property
    def downsample_factor(self) -> int:
        """Pixels per token along one side."""
        return vq_downsample_factor(self.config.channel_multipliers)

    def encode(self, pixel_values: torch.Tensor, return_dict: bool = True) -> VQEncoderOutput | tuple:
        """Pixels (batch, C, H, W) in [0, 1] -> `latents` (batch, latent_channels, H/f, W/f), before quantization.

        Raises a ValueError for NaN/inf pixels or pixels outside [0, 1] (see `check_pixel_values`)."""
        check_pixel_values(pixel_values, self.config.in_channels, self.downsample_factor)
        latents = self.encoder(pixel_values.to(self.dtype))
        return VQEncoderOutput(latents=latents) if return_dict else (latents,)

    @torch.no_grad()
    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Pixels (batch, C, H, W) in [0, 1] -> token ids (batch, (H/f) * (W/f)), row-major over the grid."""
        return self.quantize.nearest_code(self.encode(pixel_values).latents)

    def quantize_latents(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor]:
        """Latents (batch, D, h, w) -> (quantized latents with a straight-through gradient, ids (batch, h*w))."""
        token_ids = self.quantize.nearest_code(latents)
        quantized = self.quantize.lookup(token_ids, *latents.shape[-2:]).to(latents.dtype)
        return latents + (quantized - latents).detach(), token_ids

    def decode(self, latents: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Quantized latents (batch, latent_channels, h, w) -> raw decoder output `sample` (batch, C, h*f, w*f),
        in the model's dtype (see `enable_fast_decode` for the faster, inexact path)."""
        latents = latents.to(self.dtype)
        if self.fast_decode_dtype is None and not self.fast_decode_channels_last:
            sample = self.decoder(latents)
        else:
            if self.fast_decode_channels_last:
                latents = latents.contiguous(memory_format=torch.channels_last)
            dtype = self.fast_decode_dtype
            with torch.autocast(device_type=latents.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                sample = self.decoder(latents)
            sample = sample.to(self.dtype).contiguous()
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def _check_token_ids(self, token_ids: torch.Tensor) -> None:
        if not isinstance(token_ids, torch.Tensor) or token_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError("`token_ids` must be an integer torch.Tensor of shape (batch, h * w)")
        if token_ids.ndim != 2:
            raise ValueError(f"`token_ids` must have shape (batch, h * w), got {tuple(token_ids.shape)}")
        # A Python branch on tensor values cannot be traced by torch.compile / torch.export.
        if torch.compiler.is_compiling() or not token_ids.numel():
            return
        low, high = token_ids.aminmax()
        if ((low < 0) | (high >= self.config.codebook_size)).item():
            raise ValueError(
                f"`token_ids` must be codebook ids in [0, {self.config.codebook_size - 1}], got values in "
                f"[{int(low)}, {int(high)}]"
            )

    def decode_tokens(self, token_ids: torch.LongTensor, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Token ids (batch, h * w) -> raw decoder output (batch, C, h*f, w*f); callers clip to [0, 1].

        `grid_size` is (h, w); by default the grid is square.
        """
        self._check_token_ids(token_ids)
        if grid_size is None:
            side = int(round(token_ids.shape[1] ** 0.5))
            if side * side != token_ids.shape[1]:
                raise ValueError(
                    f"`token_ids` has {token_ids.shape[1]} tokens, not a square grid; pass `grid_size=(h, w)`"
                )
            grid_size = (side, side)
        latents = self.quantize.lookup(token_ids.long(), *grid_size)
        return self.decode(latents).sample

    def forward(self, pixel_values: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Reconstruction: encode, quantize (straight-through), decode."""
        quantized, _ = self.quantize_latents(self.encode(pixel_values).latents)
        return self.decode(quantized, return_dict=return_dict)
