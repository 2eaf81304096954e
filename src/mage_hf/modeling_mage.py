"""MAGE transformer models: `MageModel` (embeddings), `MageForMaskedImageModeling` (pre-training and
generation logits) and `MageForImageClassification`.

Shapes: B = batch, N = image tokens (the VQ grid, row-major), D = hidden size, V = vocabulary size.
Sequences are (B, 1 + N): position 0 holds a class token (the fake class for unconditional use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from .configuration_mage import MageConfig
from .masking import random_token_masks, sample_mask_ratio
from .vq_layers import VQTokenizer

logger = logging.get_logger(__name__)


@dataclass
class MageMaskedImageModelingOutput(ModelOutput):
    """Output of `MageForMaskedImageModeling`.

    Args:
        loss: label-smoothed cross-entropy over the codebook logits, averaged over masked positions (when labels
            are known).
        logits: (B, 1 + N, V) logits over the whole vocabulary.
        labels: (B, N) codebook ids the loss was computed against (the tokenized image when pixels were given).
        token_mask: (B, 1 + N) bool, True at masked positions (never position 0).
        token_drop_mask: (B, 1 + N) bool, True at positions removed from the encoder input.
        encoder_last_hidden_state: (B, 1 + N_kept, D) encoder output after the final norm, kept positions only.
        pooler_output: (B, D) mean of the last encoder block over kept image tokens, then `fc_norm`.
        contrastive_loss: MAGE-C's InfoNCE term, when computed.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    labels: torch.LongTensor | None = None
    token_mask: torch.BoolTensor | None = None
    token_drop_mask: torch.BoolTensor | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MageTokenEmbeddings(nn.Module):
    """Token ids (B, L) -> word + learned position embeddings, LayerNorm, dropout: (B, L, D)."""

    def __init__(self, config: MageConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.embedding_dropout_prob)

    def forward(self, input_ids: torch.LongTensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.dropout(self.layer_norm(embeddings))


def cpu_low_precision_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for bfloat16/float16 (batch, heads, length, head_dim) tensors on CPU.

    PyTorch's fused CPU attention kernel runs its blocks through float32 and is no faster in bfloat16 than in
    float32 (about 3x slower than this at MAGE's shapes), while these two batched matmuls use the CPU's bf16
    units. The softmax still accumulates in float32 internally; the scores are rounded to the input dtype once.
    """
    scores = (query * scale) @ key.transpose(-2, -1)
    return scores.softmax(dim=-1) @ value


class MageAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    `config._attn_implementation == "eager"` reproduces the original exactly: scores in float32, scaled after
    the product, max-subtracted softmax. Otherwise `F.scaled_dot_product_attention` (same maths, fused), except
    for bfloat16/float16 inference on CPU, which uses `cpu_low_precision_attention` (faster there).
    """

    def __init__(self, config: MageConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout_prob = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, output_attentions: bool = False):
        batch, length, width = hidden.shape
        qkv = self.qkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        dropout = self.dropout_prob if self.training else 0.0
        if output_attentions or self.config._attn_implementation == "eager":
            scores = (query.float() @ key.float().transpose(-2, -1)) * self.scale
            scores = scores - scores.amax(dim=-1, keepdim=True)
            weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=self.training)
            context = weights.to(value.dtype) @ value
        elif dropout == 0.0 and query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16):
            weights = None
            context = cpu_low_precision_attention(query, key, value, self.scale)
        else:
            weights = None
            context = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=self.scale)
        context = context.transpose(1, 2).reshape(batch, length, width)
        return self.proj_dropout(self.proj(context)), weights


class MageMLP(nn.Module):
    def __init__(self, config: MageConfig, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(hidden)))))


class MageDropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or at rate 0)."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return hidden
        keep = 1.0 - self.rate
        mask = hidden.new_empty((hidden.shape[0],) + (1,) * (hidden.ndim - 1)).bernoulli_(keep)
        return hidden * mask / keep


class MageLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: MageConfig, hidden_size: int, num_heads: int, intermediate_size: int, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attn = MageAttention(config, hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = MageMLP(config, hidden_size, intermediate_size)
        self.drop_path = MageDropPath(drop_path)

    def forward(self, hidden: torch.Tensor, output_attentions: bool = False):
        attended, weights = self.attn(self.norm1(hidden), output_attentions=output_attentions)
        hidden = hidden + self.drop_path(attended)
        hidden = hidden + self.drop_path(self.mlp(self.norm2(hidden)))
        return hidden, weights


class MageTransformerStack(nn.Module):
    """A sequence of `MageLayer`s that can return every hidden state and attention map."""

    def __init__(self, config: MageConfig, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                 drop_path_rate: float = 0.0):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, num_layers).tolist() if num_layers else []
        self.layers = nn.ModuleList(
            MageLayer(config, hidden_size, num_heads, intermediate_size, rate) for rate in rates
        )
        self.gradient_checkpointing = False

    def forward(self, hidden: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False):
        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden, weights = layer(hidden, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden = all_hidden + (hidden,)
            if output_attentions:
                all_attentions = all_attentions + (weights,)
        return hidden, all_hidden, all_attentions


def gather_kept(sequence: torch.Tensor, drop_mask: torch.BoolTensor) -> torch.Tensor:
    """(B, L, D) -> (B, L_kept, D): the positions where `drop_mask` is False, in order.

    Every row must keep the same number of positions (checked by the caller).
    """
    num_kept = drop_mask.shape[1] - int(drop_mask[0].sum())
    # A stable sort of the 0/1 drop flags lists kept positions first, in their original order.
    kept_positions = drop_mask.to(torch.int8).argsort(dim=1, stable=True)[:, :num_kept]
    return sequence.gather(1, kept_positions.unsqueeze(-1).expand(-1, -1, sequence.shape[-1]))


def scatter_kept(kept: torch.Tensor, drop_mask: torch.BoolTensor, filler: torch.Tensor) -> torch.Tensor:
    """Inverse of `gather_kept`: put (B, L_kept, D) back at the kept positions of `filler` (B, L, D)."""
    kept_positions = drop_mask.to(torch.int8).argsort(dim=1, stable=True)[:, : kept.shape[1]]
    return filler.scatter(1, kept_positions.unsqueeze(-1).expand(-1, -1, kept.shape[-1]), kept)


class MagePreTrainedModel(PreTrainedModel):
    config_class = MageConfig
    config: MageConfig
    base_model_prefix = "mage"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MageTokenEmbeddings", "MageLayer"]
    _supports_sdpa = True
    # Token ids are discrete: loading with `torch_dtype=torch.bfloat16` keeps the VQ tokenizer in float32 so that
    # pixels tokenize exactly as in float32 (it is a small part of the compute).
    _keep_in_fp32_modules_strict = ["vqvae"]
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The original's init: xavier-uniform linears with zero bias, unit LayerNorms, N(0, 0.02) embeddings.
        # The VQ tokenizer is skipped: it always comes from its own checkpoint (PyTorch's defaults otherwise).
        if getattr(module, "_is_vq_module", False):
            return
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, MageDecoder):
            init.normal_(module.position_embeddings, std=std)
        elif isinstance(module, MageMLMHead):
            init.zeros_(module.bias)

    def _validate_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (self.config.num_channels, size, size):
            raise ValueError(
                f"`pixel_values` must have shape (batch, {self.config.num_channels}, {size}, {size}), "
                f"got {tuple(pixel_values.shape)}"
            )


class MageModel(MagePreTrainedModel):
    """The MAGE encoder: token embeddings + ViT blocks + final norm, and the VQ tokenizer to read pixels.

    `pooler_output` is the original linear-probe feature: the mean of the last block's outputs over the image
    tokens (before the final norm), through `fc_norm`.
    """

    # Loading the encoder alone from a pre-training or classifier folder leaves their heads out on purpose.
    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"^decoder\.", r"^mlm_head\.", r"^contrastive_head\.", r"^classifier\."]

    def __init__(self, config: MageConfig):
        super().__init__(config)
        self.embeddings = MageTokenEmbeddings(config)
        self.encoder = MageTransformerStack(
            config, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.drop_path_rate,
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Registered last: `model.dtype` reports the first parameter's dtype, and the tokenizer stays float32.
        self.vqvae = VQTokenizer(**config.vqvae_config)
        self.vqvae.requires_grad_(False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Pixels (B, C, H, W) -> codebook ids (B, N). Pixels are in [0, 1] unless the config says they are
        normalised (`image_mean`/`image_std`, as the original fine-tuned classifiers expect)."""
        self._validate_pixel_values(pixel_values)
        return self.vqvae(pixel_values, check_range=self.config.image_mean is None)

    def build_input_ids(self, token_ids: torch.LongTensor, class_labels: torch.LongTensor | None = None) -> torch.LongTensor:
        """Codebook/mask ids (B, N) -> (B, 1 + N) with the class token (or the fake class) at position 0."""
        if class_labels is None:
            first = torch.full_like(token_ids[:, :1], self.config.fake_class_label)
        else:
            first = (self.config.codebook_size + class_labels.to(token_ids.device).long()).view(-1, 1)
        return torch.cat([first, token_ids], dim=1)

    def _check_input_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        if input_ids.ndim != 2 or input_ids.shape[1] not in (self.config.num_tokens, self.config.num_tokens + 1):
            raise ValueError(
                f"`input_ids` must have shape (batch, {self.config.num_tokens + 1}) with the class token at position 0, "
                f"or (batch, {self.config.num_tokens}) without it, got {tuple(input_ids.shape)}"
            )
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(
                f"`input_ids` must be in [0, {self.config.vocab_size - 1}] (vocabulary size {self.config.vocab_size}), "
                f"got values in [{int(input_ids.min())}, {int(input_ids.max())}]"
            )
        if input_ids.shape[1] == self.config.num_tokens:
            input_ids = self.build_input_ids(input_ids)
        return input_ids

    def _check_drop_mask(self, token_drop_mask: torch.Tensor, input_ids: torch.LongTensor) -> torch.BoolTensor:
        if token_drop_mask.shape != input_ids.shape:
            raise ValueError(
                f"`token_drop_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(token_drop_mask.shape)}"
            )
        token_drop_mask = token_drop_mask.bool()
        if token_drop_mask[:, 0].any():
            raise ValueError("`token_drop_mask` must not drop position 0 (the class token)")
        counts = token_drop_mask.sum(dim=1)
        if (counts != counts[0]).any():
            raise ValueError("`token_drop_mask` must drop the same number of tokens in every row")
        if (token_drop_mask & (input_ids != self.config.mask_token_id)).any():
            raise ValueError(
                "`token_drop_mask` drops tokens that are not masked: every dropped position must hold "
                f"`mask_token_id` ({self.config.mask_token_id}) in `input_ids`"
            )
        return token_drop_mask

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        token_drop_mask: torch.BoolTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) images in [0, 1]; tokenized by the built-in VQ encoder.
            input_ids: (B, 1 + N) token ids with the class token at position 0, or (B, N) codebook/mask ids
                (the fake class is prepended). Exactly one of `pixel_values` and `input_ids`.
            token_drop_mask: (B, 1 + N) bool, True at masked positions to remove from the encoder input.
            class_labels: (B,) class ids put at position 0 when reading pixels (class-conditional models).

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` (B, 1 + N_kept, D) after the final norm and
            `pooler_output` (B, D).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if (pixel_values is None) == (input_ids is None):
            raise ValueError("Pass exactly one of `pixel_values` and `input_ids`")
        if pixel_values is not None:
            input_ids = self.build_input_ids(self.tokenize(pixel_values), class_labels)
        else:
            input_ids = self._check_input_ids(input_ids)
        if token_drop_mask is not None:
            token_drop_mask = self._check_drop_mask(token_drop_mask, input_ids)
        outputs = self.encode(input_ids, token_drop_mask, output_hidden_states, output_attentions)
        return outputs if return_dict else outputs.to_tuple()

    def encode(self, input_ids: torch.LongTensor, token_drop_mask: torch.BoolTensor | None = None,
               output_hidden_states: bool = False, output_attentions: bool = False) -> BaseModelOutputWithPooling:
        """The encoder on already validated (B, 1 + N) ids and bool drop mask (no checks: callers that built
        them themselves skip the validation's host syncs)."""
        hidden = self.embeddings(input_ids)
        if token_drop_mask is not None:
            hidden = gather_kept(hidden, token_drop_mask)
        hidden, all_hidden, all_attentions = self.encoder(hidden, output_hidden_states, output_attentions)
        return BaseModelOutputWithPooling(
            last_hidden_state=self.norm(hidden), pooler_output=self.fc_norm(hidden[:, 1:].mean(dim=1)),
            hidden_states=all_hidden, attentions=all_attentions,
        )


class MageDecoder(nn.Module):
    """Encoder output on kept positions (B, 1 + N_kept, D) -> decoder states (B, 1 + N, D_dec).

    Dropped and masked positions are filled with the decoder-embedded position-0 output (the original's
    `pad_with_cls_token`), then a learned position embedding is added.
    """

    def __init__(self, config: MageConfig):
        super().__init__()
        self.embed = nn.Linear(config.hidden_size, config.decoder_hidden_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + config.num_tokens, config.decoder_hidden_size))
        self.blocks = MageTransformerStack(
            config, config.decoder_hidden_size, config.decoder_num_hidden_layers,
            config.decoder_num_attention_heads, config.decoder_intermediate_size,
        )
        self.norm = nn.LayerNorm(config.decoder_hidden_size, eps=config.layer_norm_eps)

    def forward(self, encoder_output: torch.Tensor, token_mask: torch.BoolTensor | None,
                token_drop_mask: torch.BoolTensor | None, output_hidden_states: bool = False,
                output_attentions: bool = False):
        hidden = self.embed(encoder_output)
        filler = hidden[:, :1].expand(-1, self.position_embeddings.shape[1], -1)
        if token_drop_mask is not None:
            hidden = scatter_kept(hidden, token_drop_mask, filler)
        if token_mask is not None:
            hidden = torch.where(token_mask.unsqueeze(-1), filler, hidden)
        hidden = hidden + self.position_embeddings
        hidden, all_hidden, all_attentions = self.blocks(hidden, output_hidden_states, output_attentions)
        return self.norm(hidden), all_hidden, all_attentions


class MageMLMHead(nn.Module):
    """Decoder states (B, L, D_dec) -> logits (B, L, V) against the token embedding matrix.

    As in the original, the embedding matrix is used detached: the head does not train the input embeddings.
    """

    def __init__(self, config: MageConfig):
        super().__init__()
        self.fc = nn.Linear(config.decoder_hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        hidden = self.layer_norm(self.act(self.fc(hidden)))
        if hidden.dtype == torch.float32 and not torch.is_autocast_enabled(hidden.device.type):
            return hidden @ word_embeddings.detach().t() + self.bias
        # Low precision (bf16/fp16 weights or autocast): the logits feed softmax sampling and the confidence
        # ranking, so they are still computed and returned in float32 (about 1% of a step's FLOPs) rather than
        # rounded to 8 bits of mantissa, which flips near-tied predictions.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return hidden.float() @ word_embeddings.detach().float().t() + self.bias.float()


def masked_token_loss(logits: torch.Tensor, labels: torch.LongTensor, token_mask: torch.BoolTensor,
                      codebook_size: int, label_smoothing: float) -> torch.Tensor:
    """Label-smoothed cross-entropy over codebook logits, averaged over masked positions.

    logits (B, 1 + N, V), labels (B, N) codebook ids, token_mask (B, 1 + N). The smoothing mass is spread over
    the codebook entries only (class and mask tokens get no probability mass), as in the original.
    """
    image_logits = logits[:, 1:, :codebook_size].float()
    per_token = F.cross_entropy(
        image_logits.reshape(-1, codebook_size), labels.reshape(-1), reduction="none", label_smoothing=label_smoothing
    ).view_as(labels)
    weights = token_mask[:, 1:].to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp_min(1.0)


class MageForMaskedImageModeling(MagePreTrainedModel):
    """MAGE for pre-training and generation: encoder (with token dropping) + decoder + MLM head."""

    def __init__(self, config: MageConfig):
        super().__init__(config)
        self.mage = MageModel(config)
        self.decoder = MageDecoder(config)
        self.mlm_head = MageMLMHead(config)
        self.contrastive_head = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.mage.embeddings.word_embeddings

    def sample_masks(self, batch_size: int, device, generator: torch.Generator | None = None):
        """MAGE's pre-training masks, (B, 1 + N) bool each (position 0 never masked): (token_mask, drop_mask)."""
        cfg = self.config
        ratio = sample_mask_ratio(cfg.mask_ratio_mean, cfg.mask_ratio_std, cfg.mask_ratio_min, cfg.mask_ratio_max, generator)
        masks = random_token_masks(batch_size, cfg.num_tokens, ratio, cfg.mask_ratio_min, device, generator)
        never = torch.zeros(batch_size, 1, dtype=torch.bool, device=device)
        return torch.cat([never, masks.token_mask], dim=1), torch.cat([never, masks.drop_mask], dim=1)

    def _class_tokens_for_training(self, class_labels: torch.LongTensor | None, batch_size: int, device,
                                   generator: torch.Generator | None) -> torch.LongTensor | None:
        if class_labels is None or not self.config.class_conditional:
            return None
        class_labels = class_labels.to(device).long()
        if class_labels.min() < 0 or class_labels.max() >= self.config.num_class_tokens:
            raise ValueError(f"`class_labels` must be in [0, {self.config.num_class_tokens - 1}]")
        if self.training and self.config.class_dropout_prob > 0:
            # Classifier-free guidance needs the model to also see the fake class; -1 marks "use the fake class".
            drop = torch.rand(batch_size, generator=generator, device="cpu").to(device) < self.config.class_dropout_prob
            class_labels = torch.where(drop, -1, class_labels)
        return class_labels

    def _check_image_token_ids(self, image_token_ids: torch.LongTensor) -> torch.LongTensor:
        num_tokens, codebook_size = self.config.num_tokens, self.config.codebook_size
        if image_token_ids.ndim != 2 or image_token_ids.shape[1] != num_tokens:
            raise ValueError(f"`image_token_ids` must have shape (batch, {num_tokens}), got {tuple(image_token_ids.shape)}")
        if image_token_ids.numel() and (image_token_ids.min() < 0 or image_token_ids.max() >= codebook_size):
            raise ValueError(f"`image_token_ids` must be codebook ids in [0, {codebook_size - 1}]")
        return image_token_ids.long()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        token_drop_mask: torch.BoolTensor | None = None,
        labels: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        image_token_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> MageMaskedImageModelingOutput | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) in [0, 1]. The images are tokenized and MAGE's masking is sampled (ratio from
                the truncated Gaussian, `mask_ratio_min` of the tokens dropped); the loss is returned.
            input_ids: (B, 1 + N) (or (B, N), fake class prepended); positions holding `mask_token_id` are masked.
            token_drop_mask: (B, 1 + N) bool, masked positions removed from the encoder input.
            labels: (B, N) codebook ids; gives the loss over masked positions.
            class_labels: (B,) classes for class-conditional pre-training from pixels (position 0 becomes
                `codebook_size + class`, replaced by the fake class with probability `class_dropout_prob`).
            generator: random generator for the masking (reproducible pre-training batches).
            image_token_ids: (B, N) codebook ids of already tokenized images (pre-tokenized training data): the
                same masking and loss as `pixel_values`, without running the VQ encoder.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if sum(value is not None for value in (pixel_values, input_ids, image_token_ids)) != 1:
            raise ValueError("Pass exactly one of `pixel_values`, `input_ids` and `image_token_ids`")
        if pixel_values is not None or image_token_ids is not None:
            if token_drop_mask is not None or labels is not None:
                raise ValueError(
                    "`token_drop_mask` and `labels` are computed from `pixel_values` / `image_token_ids`; "
                    "pass `input_ids` to set them"
                )
            if pixel_values is not None:
                labels = self.mage.tokenize(pixel_values)
            else:
                labels = self._check_image_token_ids(image_token_ids)
            batch_size = labels.shape[0]
            token_mask, token_drop_mask = self.sample_masks(batch_size, labels.device, generator)
            image_ids = torch.where(token_mask[:, 1:], self.config.mask_token_id, labels)
            train_classes = self._class_tokens_for_training(class_labels, batch_size, labels.device, generator)
            input_ids = self.mage.build_input_ids(image_ids)
            if train_classes is not None:
                class_ids = torch.where(train_classes < 0, self.config.fake_class_label,
                                        self.config.codebook_size + train_classes)
                input_ids[:, 0] = class_ids
        else:
            input_ids = self.mage._check_input_ids(input_ids)
            if token_drop_mask is not None:
                token_drop_mask = self.mage._check_drop_mask(token_drop_mask, input_ids)
            token_mask = input_ids == self.config.mask_token_id
            if labels is not None and labels.shape != (input_ids.shape[0], self.config.num_tokens):
                raise ValueError(
                    f"`labels` must have shape (batch, {self.config.num_tokens}), got {tuple(labels.shape)}"
                )
            if labels is not None and (labels.min() < 0 or labels.max() >= self.config.codebook_size):
                raise ValueError(f"`labels` must be codebook ids in [0, {self.config.codebook_size - 1}]")

        # Inputs are validated above (or built here), so the encoder runs without re-checking them.
        encoded = self.mage.encode(input_ids, token_drop_mask, output_hidden_states, output_attentions)
        decoded, dec_hidden, dec_attentions = self.decoder(
            encoded.last_hidden_state, token_mask, token_drop_mask, output_hidden_states, output_attentions
        )
        logits = self.mlm_head(decoded, self.mage.embeddings.word_embeddings.weight)
        loss = None
        if labels is not None:
            loss = masked_token_loss(logits, labels, token_mask, self.config.codebook_size, self.config.label_smoothing)
        hidden_states = encoded.hidden_states + dec_hidden if output_hidden_states else None
        attentions = encoded.attentions + dec_attentions if output_attentions else None
        output = MageMaskedImageModelingOutput(
            loss=loss, logits=logits, labels=labels, token_mask=token_mask,
            token_drop_mask=token_drop_mask,
            encoder_last_hidden_state=encoded.last_hidden_state, pooler_output=encoded.pooler_output,
            hidden_states=hidden_states, attentions=attentions,
        )
        return output if return_dict else output.to_tuple()


class MageForImageClassification(MagePreTrainedModel):
    """MAGE encoder + linear head. `classifier_pooling="mean"`: mean of image tokens then `fc_norm` (the
    original `global_pool=True`); `"cls"`: position 0 after the final `norm`."""

    def __init__(self, config: MageConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mage = MageModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""labels: (B,) class ids (cross-entropy) or (B, num_labels) soft targets (e.g. from mixup)."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.mage(
            pixel_values=pixel_values, input_ids=input_ids, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        if self.config.classifier_pooling == "mean":
            features = outputs.pooler_output
        else:
            features = outputs.last_hidden_state[:, 0]
        logits = self.classifier(features)
        loss = None
        if labels is not None:
            if labels.ndim == 2:
                loss = torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits.float(), labels.to(logits.device))
        if not return_dict:
            return tuple(v for v in (loss, logits, outputs.hidden_states, outputs.attentions) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
