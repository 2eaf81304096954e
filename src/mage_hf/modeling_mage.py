"""MAGE transformer models: `MageModel` (embeddings), `MageForMaskedImageModeling` (pre-training and
generation logits) and `MageForImageClassification`.

Shapes: B = batch, N = image tokens (the VQ grid, row-major), D = hidden size, V = vocabulary size.
Sequences are (B, 1 + N): position 0 holds a class token (the fake class for unconditional use).

Inputs are checked in eager mode (one host sync per call for the token-id checks); the checks on tensor values
are skipped while `torch.compile` / `torch.export` trace the model, and the hot paths that build their own inputs
(`MageModel.encode`, `MageForMaskedImageModeling.predict_logits`) skip them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging
from transformers.utils.output_capturing import capture_outputs

from .configuration_mage import MageConfig
from .embeddings import POOLING_FEATURE_KIND, select_features
from .masking import gather_kept, num_masked_tokens, random_token_masks, sample_mask_ratio, scatter_kept
from .vq_layers import VQTokenizer

logger = logging.get_logger(__name__)


def _checks_values() -> bool:
    """Whether inputs' values may be inspected: not while `torch.compile` / `torch.export` trace the model (a Python
    branch on a tensor value cannot be traced; the traced graph runs without the checks)."""
    return not torch.compiler.is_compiling()


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
        hidden_states: the encoder's: its input and each block's output, (B, 1 + N_kept, D) each (before the final
            norm), with `output_hidden_states`.
        attentions: the encoder's attention maps, (B, heads, 1 + N_kept, 1 + N_kept) per block, with
            `output_attentions`.
        decoder_hidden_states: the decoder's input and each decoder block's output, (B, 1 + N, D_dec) each.
        decoder_attentions: the decoder's attention maps, (B, decoder heads, 1 + N, 1 + N) per block.
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
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


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

    def word_embedding_matrix(self) -> torch.Tensor:
        """The (V, D) token-embedding matrix the MLM head's logits are taken against, without gradient (as the
        original's detached matrix). Read through `word_embeddings`' forward, not its `.weight`: a wrapper that
        shards the module (FSDP2's `fully_shard`, as Accelerate applies it) gathers the whole matrix only there."""
        ids = torch.arange(self.word_embeddings.num_embeddings, device=self.word_embeddings.weight.device)
        with torch.no_grad():
            return self.word_embeddings(ids)


# --------------------------------------------------------------------------- attention functions


def mage_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's attention, exactly: scores in float32, scaled after the product, max-subtracted softmax.

    query/key/value (B, heads, L, head_dim) -> context (B, L, heads, head_dim) and weights (B, heads, L, L) in
    float32 (the `attn_implementation="eager"` path of transformers' attention interface).
    """
    scores = (query.float() @ key.float().transpose(-2, -1)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    scores = scores - scores.amax(dim=-1, keepdim=True)
    weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=module.training)
    context = weights.to(value.dtype) @ value
    return context.transpose(1, 2), weights


def cpu_low_precision_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v for bfloat16/float16 (batch, heads, length, head_dim) tensors on CPU.

    PyTorch's fused CPU attention kernel runs its blocks through float32 and is no faster in bfloat16 than in
    float32 (about 3x slower than this at MAGE's shapes), while these two batched matmuls use the CPU's bf16
    units. The softmax still accumulates in float32 internally; the scores are rounded to the input dtype once.
    """
    scores = (query * scale) @ key.transpose(-2, -1)
    return scores.softmax(dim=-1) @ value


def _uses_cpu_low_precision_path(query: torch.Tensor, implementation: str | None, dropout: float) -> bool:
    """`sdpa` inference on CPU in bfloat16/float16 runs `cpu_low_precision_attention` instead (faster there)."""
    return (
        implementation == "sdpa" and dropout == 0.0 and query.device.type == "cpu"
        and query.dtype in (torch.bfloat16, torch.float16)
    )


class MageAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection, through transformers' attention interface.

    `config._attn_implementation`: `"eager"` is the original's maths exactly (`mage_eager_attention_forward`),
    `"sdpa"` (default) `F.scaled_dot_product_attention`, except for bfloat16/float16 inference on CPU, which uses
    `cpu_low_precision_attention`; `"flash_attention_2"` / `"flex_attention"` (and other registered functions) are
    the library's. Asking for the attention maps (`output_attentions`) runs the eager maths, which returns them.
    """

    def __init__(self, config: MageConfig, hidden_size: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.attention_dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, output_attentions: bool = False):
        """(B, L, D) -> (B, L, D) and the attention weights (B, heads, L, L) when the eager maths ran, else None."""
        batch, length, width = hidden.shape
        qkv = self.qkv(hidden).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        dropout = self.attention_dropout if self.training else 0.0
        implementation = self.config._attn_implementation
        if output_attentions:
            implementation = "eager"
        if _uses_cpu_low_precision_path(query, implementation, dropout):
            context, weights = cpu_low_precision_attention(query, key, value, self.scaling).transpose(1, 2), None
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                implementation, mage_eager_attention_forward
            )
            context, weights = attention_interface(
                self, query, key, value, None, dropout=dropout, scaling=self.scaling
            )
        context = context.reshape(batch, length, width)
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


def drop_path_rates(drop_path_rate: float, num_layers: int) -> list[float]:
    """Stochastic depth rising linearly from 0 at the first layer to `drop_path_rate` at the last (as timm).

    Plain Python, so that a model can be built on the `meta` device."""
    if num_layers <= 1:
        return [0.0] * num_layers
    return [drop_path_rate * index / (num_layers - 1) for index in range(num_layers)]


class MageTransformerStack(nn.Module):
    """A sequence of `MageLayer`s.

    The encoder's hidden states and attention maps are recorded by `MageModel`'s output capture; the decoder (a
    part of the pre-training head, not a model of its own) asks the stack to collect them (`collect_outputs`).
    """

    def __init__(self, config: MageConfig, hidden_size: int, num_layers: int, num_heads: int, intermediate_size: int,
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(
            MageLayer(config, hidden_size, num_heads, intermediate_size, rate)
            for rate in drop_path_rates(drop_path_rate, num_layers)
        )

    def forward(self, hidden: torch.Tensor, output_hidden_states: bool = False, output_attentions: bool = False,
                collect_outputs: bool = False):
        """(B, L, D) -> (B, L, D), and (when `collect_outputs`) the tuples of hidden states (input + each layer's
        output) and attention maps that were asked for (else None)."""
        all_hidden = (hidden,) if collect_outputs and output_hidden_states else None
        all_attentions = () if collect_outputs and output_attentions else None
        for layer in self.layers:
            hidden, weights = layer(hidden, output_attentions=bool(output_attentions))
            if all_hidden is not None:
                all_hidden = all_hidden + (hidden,)
            if all_attentions is not None:
                all_attentions = all_attentions + (weights,)
        return hidden, all_hidden, all_attentions


# --------------------------------------------------------------------------- pre-trained base


class MagePreTrainedModel(PreTrainedModel):
    config_class = MageConfig
    config: MageConfig
    base_model_prefix = "mage"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MageTokenEmbeddings", "MageLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    # Recorded by `MageModel.encode` (hence by every class, all of which encode through it).
    _can_record_outputs = {"hidden_states": MageLayer, "attentions": MageAttention}
    # Token ids are discrete: loading with `dtype=torch.bfloat16` keeps the VQ tokenizer in float32 so that pixels
    # tokenize exactly as in float32 (it is a small part of the compute). `MageModel` builds it in float32 as well.
    _keep_in_fp32_modules_strict = ["vqvae"]
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # The original's init: xavier-uniform linears with zero bias, unit LayerNorms, N(0, 0.02) embeddings.
        # The VQ tokenizer normally comes from its checkpoint; when it does not, it gets the original VQGAN's
        # init: PyTorch's default convolutions, unit GroupNorms, a uniform(-1/K, 1/K) codebook of K codes.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding) and getattr(module, "_is_vq_codebook", False):
            init.uniform_(module.weight, -1.0 / module.num_embeddings, 1.0 / module.num_embeddings)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=std)
        elif isinstance(module, MageDecoder):
            init.normal_(module.position_embeddings, std=std)
        elif isinstance(module, MageMLMHead):
            init.zeros_(module.bias)

    def save_pretrained(self, save_directory, *args, variant: str | None = None, **kwargs):
        # `variant` is named in the signature: diffusers' `DiffusionPipeline.save_pretrained` passes it to a
        # component only when the component's `save_pretrained` signature lists it.
        kwargs["variant"] = variant
        wrapper = type(self)
        if not wrapper.__module__.startswith("torch."):
            return super().save_pretrained(save_directory, *args, **kwargs)
        # A subclass made at run time inside torch (FSDP2's `fully_shard` turns the model into `FSDP<Class>`):
        # transformers would copy torch's module as the folder's code and name the wrapper in `auto_map`, so the
        # folder is written as the MAGE class it wraps.
        self.__class__ = next(cls for cls in wrapper.__mro__[1:] if issubclass(cls, MagePreTrainedModel))
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.__class__ = wrapper

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        # Loading recreates every float parameter as trainable: freeze again what `__init__` froze.
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_untrained()
        return loaded

    def _freeze_untrained(self) -> None:
        """Freeze what no loss trains (so that every trainable parameter gets a gradient, as DDP without
        `find_unused_parameters` needs): the VQ tokenizer (its forward runs without gradients), and in pre-training
        `fc_norm` unless a contrastive head reads the pooled features."""
        for module in self.modules():
            if isinstance(module, MageModel):
                module.vqvae.requires_grad_(False)
            if isinstance(module, MageForMaskedImageModeling) and module.mage.fc_norm is not None:
                module.mage.fc_norm.requires_grad_(module.contrastive_head is not None)

    def _validate_pixel_values(self, pixel_values: torch.Tensor) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (self.config.num_channels, size, size):
            raise ValueError(
                f"`pixel_values` must have shape (batch, {self.config.num_channels}, {size}, {size}), "
                f"got {tuple(pixel_values.shape)}"
            )

    # ------------------------------------------------------------------ vocabulary
    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding (no check: keep the vocabulary layout of `MageConfig`, or use
        `resize_class_tokens`)."""
        self.base_model.embeddings.word_embeddings = value

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Refused unless the size is unchanged: rows cannot be appended to MAGE's vocabulary (codebook ids, class
        tokens, then the mask token, which must stay last); `resize_class_tokens` re-lays it out consistently."""
        config = self.config
        if (new_num_tokens is None or new_num_tokens == config.vocab_size) and pad_to_multiple_of is None:
            return self.get_input_embeddings()
        raise ValueError(
            f"`resize_token_embeddings({new_num_tokens})` cannot keep MAGE's vocabulary layout (codebook ids [0, "
            f"{config.codebook_size}), {config.num_class_tokens} class tokens, then `mask_token_id` last; vocab_size "
            f"{config.vocab_size}); use `model.resize_class_tokens(num_classes)` to change the class tokens"
        )

    @torch.no_grad()
    def resize_class_tokens(self, num_classes: int) -> nn.Embedding:
        """Re-lay out the vocabulary for `num_classes` real classes (e.g. class-conditional fine-tuning on a new
        label set): codebook ids `[0, codebook_size)`, class tokens `codebook_size + c` for `c < num_classes`, the
        fake class `codebook_size + num_classes`, then the mask token (`vocab_size = codebook_size + num_classes +
        2`).

        Codebook rows are kept; a real class `c` keeps its row when the old vocabulary had it (the old fake class is
        not a real class), the fake-class and mask rows move to their new ids, and new class rows are drawn like
        fresh embeddings (N(0, `initializer_range`)). The masked-token head's bias follows (new entries 0).
        Updates `config.num_class_tokens` and `config.fake_class_label`; returns the new embedding.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}")
        config = self.config
        codebook, old_fake = config.codebook_size, config.fake_class_label - config.codebook_size
        sources = list(range(codebook))
        sources += [codebook + c if c < config.num_class_tokens and c != old_fake else -1 for c in range(num_classes)]
        sources += [config.fake_class_label, config.mask_token_id]
        old = self.get_input_embeddings()
        new = nn.Embedding(len(sources), old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        new.weight.normal_(std=config.initializer_range)
        new.weight.requires_grad_(old.weight.requires_grad)
        index = torch.tensor(sources, device=old.weight.device)
        kept = index >= 0
        new.weight[kept] = old.weight[index[kept]]
        self.set_input_embeddings(new)
        head = getattr(self, "mlm_head", None)
        if head is not None:
            bias = head.bias.new_zeros(len(sources))
            bias[kept] = head.bias[index[kept]]
            head.bias = nn.Parameter(bias, requires_grad=head.bias.requires_grad)
        config.num_class_tokens = num_classes + 1
        config.fake_class_label = codebook + num_classes
        return new


# --------------------------------------------------------------------------- MageModel


class MageModel(MagePreTrainedModel):
    """The MAGE encoder: token embeddings + ViT blocks + final norm, and the VQ tokenizer to read pixels.

    `pooler_output` is the original linear-probe feature: the mean of the last block's outputs over the image
    tokens (before the final norm), through `fc_norm`. A head that reads only one of the two outputs builds the
    encoder without the other's norm (`add_final_norm` / `add_pooling_layer`), so that every parameter it holds
    is trained (what DDP without `find_unused_parameters` needs).
    """

    # Loading the encoder alone from a pre-training or classifier folder leaves their heads out on purpose.
    _keys_to_ignore_on_load_unexpected = [r"position_ids", r"^decoder\.", r"^mlm_head\.", r"^contrastive_head\.", r"^classifier\."]
    # A classifier folder has only the norm its pooling reads: the other was never trained, so its init (unit
    # weight, zero bias, the original's linear-probe `fc_norm`) is what it would have held.
    _keys_to_ignore_on_load_missing = [r"^norm\.", r"^fc_norm\."]

    def __init__(self, config: MageConfig, add_pooling_layer: bool = True, add_final_norm: bool = True):
        r"""
        add_pooling_layer: build `fc_norm` and return `pooler_output` (else it is None).
        add_final_norm: build the final `norm`; without it `last_hidden_state` is the last block's output.
        """
        super().__init__(config)
        self.embeddings = MageTokenEmbeddings(config)
        self.encoder = MageTransformerStack(
            config, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
            config.intermediate_size, config.drop_path_rate,
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add_final_norm else None
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if add_pooling_layer else None
        # Registered last: `model.dtype` reports the first parameter's dtype. Built in float32 whatever the
        # default dtype (`_from_config(dtype=...)`), as `_keep_in_fp32_modules_strict` loads it.
        self.vqvae = VQTokenizer(**config.vqvae_config).float()
        # `_init_weights` gives the codebook the original VQGAN's uniform init, not the token embeddings' normal.
        self.vqvae.quantize.embedding._is_vq_codebook = True
        self._freeze_untrained()
        self.post_init()

    def tokenize(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Pixels (B, C, H, W) -> codebook ids (B, N). Pixels are in [0, 1] unless the config says they are
        normalised (`image_mean`/`image_std`, as the original fine-tuned classifiers expect); they must be finite."""
        self._validate_pixel_values(pixel_values)
        return self.vqvae(pixel_values, check_range=self.config.image_mean is None)

    def build_input_ids(self, token_ids: torch.LongTensor, class_labels: torch.LongTensor | None = None) -> torch.LongTensor:
        """Codebook/mask ids (B, N) -> (B, 1 + N) with the class token (or the fake class) at position 0.

        No checks (the pipelines call it every step); `class_labels` (B,) are class ids in [0, num_class_tokens).
        """
        if class_labels is None:
            first = torch.full_like(token_ids[:, :1], self.config.fake_class_label)
        else:
            first = (self.config.codebook_size + class_labels.to(token_ids.device).long()).view(-1, 1)
        return torch.cat([first, token_ids], dim=1)

    # ------------------------------------------------------------------ input checks
    def _check_class_labels(self, class_labels, batch_size: int, device) -> torch.LongTensor:
        """`class_labels`: an int, a list of ints or an integer tensor, one per image (or one for all) -> (B,)."""
        if isinstance(class_labels, (list, tuple)):
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in class_labels):
                raise TypeError(f"`class_labels` must be ints (class ids), got {list(class_labels)!r}")
            class_labels = torch.tensor(class_labels, dtype=torch.long)
        elif isinstance(class_labels, int) and not isinstance(class_labels, bool):
            class_labels = torch.tensor([class_labels])
        if not isinstance(class_labels, torch.Tensor) or class_labels.is_floating_point() \
                or class_labels.dtype == torch.bool:
            raise TypeError(
                f"`class_labels` must be class ids (an int, a list of ints or an integer tensor), got {class_labels!r}"
            )
        class_labels = class_labels.reshape(-1).to(device)
        if class_labels.shape[0] == 1 and batch_size != 1:
            class_labels = class_labels.expand(batch_size)
        if class_labels.shape[0] != batch_size:
            raise ValueError(
                f"`class_labels` must hold 1 or {batch_size} class ids (one per image), got {class_labels.shape[0]}"
            )
        num_classes = self.config.num_class_tokens
        if _checks_values() and ((class_labels < 0) | (class_labels >= num_classes)).any():
            bad = sorted({int(c) for c in class_labels if not 0 <= int(c) < num_classes})
            raise ValueError(f"`class_labels` {bad} out of range: class ids must be in [0, {num_classes - 1}]")
        return class_labels.long()

    def _check_input_ids(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """(B, 1 + N) ids, or (B, N) image ids (the fake class is prepended) -> (B, 1 + N), checked: position 0 a
        class token (or the fake class), image positions codebook ids or `mask_token_id`."""
        config = self.config
        num_tokens = config.num_tokens
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"`input_ids` must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise TypeError(f"`input_ids` must be an integer tensor of token ids, got dtype {input_ids.dtype}")
        if input_ids.ndim != 2 or input_ids.shape[1] not in (num_tokens, num_tokens + 1):
            raise ValueError(
                f"`input_ids` must have shape (batch, {num_tokens + 1}) with the class token at position 0, "
                f"or (batch, {num_tokens}) without it, got {tuple(input_ids.shape)}"
            )
        has_class_token = input_ids.shape[1] == num_tokens + 1
        if _checks_values() and input_ids.numel():
            self._check_token_id_values(input_ids, has_class_token)
        return input_ids.long() if has_class_token else self.build_input_ids(input_ids.long())

    def _check_token_id_values(self, input_ids: torch.LongTensor, has_class_token: bool) -> None:
        config = self.config
        codebook, mask = config.codebook_size, config.mask_token_id
        image = input_ids[:, 1:] if has_class_token else input_ids
        bad_image = (image < 0) | ((image >= codebook) & (image != mask))
        bad = bad_image.any()
        if has_class_token:
            first = input_ids[:, 0]
            bad_first = (first < codebook) | (first >= mask)
            bad = bad | bad_first.any()
        if not bad:  # the one host sync of a valid input
            return
        if bad_image.any():
            row, col = (int(i) for i in bad_image.nonzero()[0])
            value = int(image[row, col])
            col += int(has_class_token)
            raise ValueError(
                f"`input_ids` at image positions must be codebook ids in [0, {codebook - 1}] or `mask_token_id` "
                f"{mask} (vocabulary size {config.vocab_size}; class tokens belong at position 0 only), got {value} "
                f"at [{row}, {col}]"
            )
        row = int(bad_first.nonzero()[0])
        raise ValueError(
            f"`input_ids[:, 0]` must be a class token in [{codebook}, {mask - 1}] (the fake class is "
            f"{config.fake_class_label}), got {int(input_ids[row, 0])} in row {row}"
        )

    def _check_drop_mask(self, token_drop_mask: torch.Tensor, input_ids: torch.LongTensor) -> torch.BoolTensor:
        if not isinstance(token_drop_mask, torch.Tensor):
            raise TypeError(f"`token_drop_mask` must be a bool tensor, got {type(token_drop_mask).__name__}")
        if token_drop_mask.shape != input_ids.shape:
            raise ValueError(
                f"`token_drop_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, got {tuple(token_drop_mask.shape)}"
            )
        token_drop_mask = token_drop_mask.bool()
        if not _checks_values():
            return token_drop_mask
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

    def prepare_input_ids(self, pixel_values: torch.Tensor | None = None, input_ids: torch.LongTensor | None = None,
                          class_labels=None) -> torch.LongTensor:
        """The checked (B, 1 + N) ids for `pixel_values` (tokenized) or `input_ids`, with `class_labels` at
        position 0 when given (for pixels, or (B, N) ids)."""
        if (pixel_values is None) == (input_ids is None):
            raise ValueError("Pass exactly one of `pixel_values` and `input_ids`")
        if pixel_values is not None:
            token_ids = self.tokenize(pixel_values)
        else:
            if class_labels is not None and isinstance(input_ids, torch.Tensor) and input_ids.ndim == 2 \
                    and input_ids.shape[1] == self.config.num_tokens + 1:
                raise ValueError(
                    "`class_labels` was given with (batch, 1 + N) `input_ids`, whose position 0 already holds the "
                    "class token; pass (batch, N) image ids, or leave `class_labels` None"
                )
            input_ids = self._check_input_ids(input_ids)
            if class_labels is None:
                return input_ids
            token_ids = input_ids[:, 1:]
        if class_labels is not None:
            class_labels = self._check_class_labels(class_labels, token_ids.shape[0], token_ids.device)
        return self.build_input_ids(token_ids, class_labels)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        token_drop_mask: torch.BoolTensor | None = None,
        class_labels: torch.LongTensor | list[int] | int | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            pixel_values: (B, C, H, W) images in [0, 1]; tokenized by the built-in VQ encoder.
            input_ids: (B, 1 + N) token ids with the class token at position 0, or (B, N) codebook/mask ids
                (the fake class, or `class_labels`, is prepended). Exactly one of `pixel_values` and `input_ids`.
            token_drop_mask: (B, 1 + N) bool, True at masked positions to remove from the encoder input.
            class_labels: class ids (B,) (a tensor, a list, or one int for all) put at position 0 when reading
                pixels or (B, N) ids (class-conditional models).
            output_hidden_states: also return the embedding output and each block's output (before the final
                norm); an int or a list of ints selects some of them.
            output_attentions: also return each block's attention maps (computed with the eager maths).

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` (B, 1 + N_kept, D) after the final norm and
            `pooler_output` (B, D).
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        input_ids = self.prepare_input_ids(pixel_values, input_ids, class_labels)
        if token_drop_mask is not None:
            token_drop_mask = self._check_drop_mask(token_drop_mask, input_ids)
        outputs = self.encode(
            input_ids, token_drop_mask, return_dict=True,
            output_hidden_states=self._resolve(output_hidden_states, "output_hidden_states"),
            output_attentions=self._resolve(output_attentions, "output_attentions"),
        )
        return outputs if return_dict else outputs.to_tuple()

    def _resolve(self, value, name: str):
        return getattr(self.config, name) if value is None else value

    @capture_outputs(tie_last_hidden_states=False)
    def encode(self, input_ids: torch.LongTensor, token_drop_mask: torch.BoolTensor | None = None, *,
               num_kept: int | None = None, **kwargs) -> BaseModelOutputWithPooling:
        """The encoder on already validated (B, 1 + N) ids and bool drop mask (no checks: callers that built them
        themselves skip the validation's host syncs). `num_kept` (positions left after dropping) spares counting
        them from the mask. Keyword `output_hidden_states` / `output_attentions` / `return_dict` as `forward`."""
        output_attentions = kwargs.get("output_attentions", self.config.output_attentions)
        hidden = self.embeddings(input_ids)
        if token_drop_mask is not None:
            hidden = gather_kept(hidden, token_drop_mask, num_kept)
        hidden, _, _ = self.encoder(hidden, output_attentions=output_attentions)
        return BaseModelOutputWithPooling(
            last_hidden_state=self.norm(hidden) if self.norm is not None else hidden,
            pooler_output=self.fc_norm(hidden[:, 1:].mean(dim=1)) if self.fc_norm is not None else None,
        )


# --------------------------------------------------------------------------- pre-training head


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
        hidden, all_hidden, all_attentions = self.blocks(
            hidden, output_hidden_states, output_attentions, collect_outputs=True
        )
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
    """MAGE for pre-training and generation: encoder (with token dropping) + decoder + MLM head.

    The masked-token loss never reads `pooler_output`, so `mage.fc_norm` is frozen (every trainable parameter then
    gets a gradient, as DDP without `find_unused_parameters` needs) until a contrastive head (MAGE-C, whose loss
    reads the pooled features) is set as `contrastive_head`. It stays in the model: it is the linear-probe norm a
    `MageModel` loaded from this folder uses.
    """

    def __init__(self, config: MageConfig):
        super().__init__(config)
        self.mage = MageModel(config)
        self.decoder = MageDecoder(config)
        self.mlm_head = MageMLMHead(config)
        self.contrastive_head = None
        self.post_init()

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "contrastive_head" and "mage" in self._modules:
            self._freeze_untrained()

    def sample_masks(self, batch_size: int, device, generator: torch.Generator | None = None,
                     noise: torch.Tensor | None = None, mask_ratio: float | None = None):
        """MAGE's pre-training masks, (B, 1 + N) bool each (position 0 never masked): (token_mask, drop_mask).

        The mask ratio is drawn from the config's truncated Gaussian (one draw from `generator`) unless
        `mask_ratio` is given; the token order comes from uniform noise (B, N) drawn next from `generator`
        unless `noise` is given (see `random_token_masks`). Given both, nothing random is drawn.
        """
        cfg = self.config
        if mask_ratio is None:
            mask_ratio = sample_mask_ratio(
                cfg.mask_ratio_mean, cfg.mask_ratio_std, cfg.mask_ratio_min, cfg.mask_ratio_max, generator
            )
        elif isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) \
                or not cfg.mask_ratio_min <= mask_ratio <= 1:
            raise ValueError(
                f"`mask_ratio` must be a float in [mask_ratio_min={cfg.mask_ratio_min}, 1] (at least the dropped "
                f"fraction is masked), got {mask_ratio!r}"
            )
        masks = random_token_masks(batch_size, cfg.num_tokens, mask_ratio, cfg.mask_ratio_min, device, generator, noise)
        never = torch.zeros(batch_size, 1, dtype=torch.bool, device=device)
        return torch.cat([never, masks.token_mask], dim=1), torch.cat([never, masks.drop_mask], dim=1)

    def _class_tokens_for_training(self, class_labels, batch_size: int, device,
                                   generator: torch.Generator | None) -> torch.LongTensor | None:
        if class_labels is None or not self.config.class_conditional:
            return None
        class_labels = self.mage._check_class_labels(class_labels, batch_size, device)
        if self.training and self.config.class_dropout_prob > 0:
            # Classifier-free guidance needs the model to also see the fake class; -1 marks "use the fake class".
            drop = torch.rand(batch_size, generator=generator, device="cpu").to(device) < self.config.class_dropout_prob
            class_labels = torch.where(drop, -1, class_labels)
        return class_labels

    def _check_image_token_ids(self, image_token_ids: torch.LongTensor) -> torch.LongTensor:
        num_tokens, codebook_size = self.config.num_tokens, self.config.codebook_size
        if not isinstance(image_token_ids, torch.Tensor) or image_token_ids.is_floating_point():
            raise TypeError("`image_token_ids` must be an integer tensor of codebook ids")
        if image_token_ids.ndim != 2 or image_token_ids.shape[1] != num_tokens:
            raise ValueError(f"`image_token_ids` must have shape (batch, {num_tokens}), got {tuple(image_token_ids.shape)}")
        if _checks_values() and image_token_ids.numel() and (
            (image_token_ids < 0) | (image_token_ids >= codebook_size)
        ).any():
            raise ValueError(f"`image_token_ids` must be codebook ids in [0, {codebook_size - 1}]")
        return image_token_ids.long()

    def _check_labels(self, labels: torch.LongTensor, batch_size: int) -> torch.LongTensor:
        config = self.config
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point():
            raise TypeError("`labels` must be an integer tensor of codebook ids")
        if labels.shape != (batch_size, config.num_tokens):
            raise ValueError(f"`labels` must have shape (batch, {config.num_tokens}), got {tuple(labels.shape)}")
        if _checks_values() and ((labels < 0) | (labels >= config.codebook_size)).any():
            raise ValueError(f"`labels` must be codebook ids in [0, {config.codebook_size - 1}]")
        return labels

    def _masked_inputs(self, pixel_values, image_token_ids, class_labels, generator, noise, mask_ratio):
        """Pixels or pre-tokenized ids -> (input_ids, labels, token_mask, token_drop_mask, num_kept) with MAGE's
        masking sampled (or fixed by `noise` / `mask_ratio`)."""
        cfg = self.config
        if pixel_values is not None:
            labels = self.mage.tokenize(pixel_values)
        else:
            labels = self._check_image_token_ids(image_token_ids)
        batch_size = labels.shape[0]
        token_mask, token_drop_mask = self.sample_masks(batch_size, labels.device, generator, noise, mask_ratio)
        image_ids = torch.where(token_mask[:, 1:], cfg.mask_token_id, labels)
        train_classes = self._class_tokens_for_training(class_labels, batch_size, labels.device, generator)
        input_ids = self.mage.build_input_ids(image_ids)
        if train_classes is not None:
            class_ids = torch.where(train_classes < 0, cfg.fake_class_label, cfg.codebook_size + train_classes)
            input_ids[:, 0] = class_ids
        num_kept = 1 + cfg.num_tokens - num_masked_tokens(cfg.num_tokens, cfg.mask_ratio_min)
        return input_ids, labels, token_mask, token_drop_mask, num_kept

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
        noise: torch.Tensor | None = None,
        mask_ratio: float | None = None,
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
            noise: (B, N) float noise fixing which tokens are masked and dropped (the smallest first, as
                ViTMAE's `noise`), instead of a draw from `generator`.
            mask_ratio: the fraction of image tokens masked (in [`mask_ratio_min`, 1]), instead of a draw from
                `generator`. With `noise` and `mask_ratio` both given, the masks are fixed (nothing random is drawn
                except the class dropout of class-conditional training); with only one, the other is drawn as
                usual (the ratio first, then the noise).
            output_hidden_states, output_attentions: the encoder's in `hidden_states` / `attentions`, the decoder's
                in `decoder_hidden_states` / `decoder_attentions`.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = self.mage._resolve(output_attentions, "output_attentions")
        output_hidden_states = self.mage._resolve(output_hidden_states, "output_hidden_states")
        if sum(value is not None for value in (pixel_values, input_ids, image_token_ids)) != 1:
            raise ValueError("Pass exactly one of `pixel_values`, `input_ids` and `image_token_ids`")
        num_kept = None
        if pixel_values is not None or image_token_ids is not None:
            if token_drop_mask is not None or labels is not None:
                raise ValueError(
                    "`token_drop_mask` and `labels` are computed from `pixel_values` / `image_token_ids`; "
                    "pass `input_ids` to set them"
                )
            input_ids, labels, token_mask, token_drop_mask, num_kept = self._masked_inputs(
                pixel_values, image_token_ids, class_labels, generator, noise, mask_ratio
            )
        else:
            if noise is not None or mask_ratio is not None:
                raise ValueError(
                    "`noise` and `mask_ratio` fix the masking sampled for `pixel_values` / `image_token_ids`; with "
                    "`input_ids`, mask positions with `mask_token_id` (and `token_drop_mask`)"
                )
            input_ids = self.mage._check_input_ids(input_ids)
            if token_drop_mask is not None:
                token_drop_mask = self.mage._check_drop_mask(token_drop_mask, input_ids)
            token_mask = input_ids == self.config.mask_token_id
            if labels is not None:
                labels = self._check_labels(labels, input_ids.shape[0])

        # Inputs are validated above (or built here), so the encoder runs without re-checking them.
        encoded = self.mage.encode(
            input_ids, token_drop_mask, num_kept=num_kept, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, return_dict=True,
        )
        decoded, decoder_hidden, decoder_attentions = self.decoder(
            encoded.last_hidden_state, token_mask, token_drop_mask, output_hidden_states, output_attentions
        )
        logits = self.mlm_head(decoded, self.mage.embeddings.word_embedding_matrix())
        loss = None
        if labels is not None:
            loss = masked_token_loss(logits, labels, token_mask, self.config.codebook_size, self.config.label_smoothing)
        output = MageMaskedImageModelingOutput(
            loss=loss, logits=logits, labels=labels, token_mask=token_mask, token_drop_mask=token_drop_mask,
            encoder_last_hidden_state=encoded.last_hidden_state, pooler_output=encoded.pooler_output,
            hidden_states=encoded.hidden_states, attentions=encoded.attentions,
            decoder_hidden_states=decoder_hidden, decoder_attentions=decoder_attentions,
        )
        return output if return_dict else output.to_tuple()

    def predict_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Logits (B, 1 + N, V) for already valid (B, 1 + N) ids: `forward(input_ids=...).logits` without its input
        checks (no host sync) and without loss or extra outputs, for the per-step call of iterative decoding, whose
        caller builds the ids itself. Nothing is dropped (a drop mask would cost a host sync to count the kept
        positions); use `forward` for that."""
        encoded = self.mage.encode(input_ids, None, output_hidden_states=False, output_attentions=False,
                                   return_dict=True)
        token_mask = input_ids == self.config.mask_token_id
        decoded, _, _ = self.decoder(encoded.last_hidden_state, token_mask, None)
        return self.mlm_head(decoded, self.mage.embeddings.word_embedding_matrix())


# --------------------------------------------------------------------------- classification head


class MageForImageClassification(MagePreTrainedModel):
    """MAGE encoder + linear head. `classifier_pooling="mean"`: mean of image tokens then `fc_norm` (the
    original `global_pool=True`); `"cls"`: position 0 after the final `norm`; `"tokens"`: every image token
    after the final `norm`, flattened in grid order (B, num_tokens * hidden_size) (not in the original: with a
    few images per class, a linear head on the token map keeps the layout that pooling discards). Only the norm
    the pooling reads is built (as the original classifiers' checkpoints hold only that one).

    Loss by `config.problem_type` (transformers' rule; inferred from `num_labels` and the labels' dtype when
    unset): `"regression"` mean squared error, `"single_label_classification"` cross-entropy on (B,) class ids or
    soft targets (B, num_labels) (e.g. from mixup), `"multi_label_classification"` binary cross-entropy with
    logits on (B, num_labels) targets.
    """

    def __init__(self, config: MageConfig):
        mean_pooling = config.classifier_pooling == "mean"
        # Folders saved with both norms (older mage-hf, or a pre-training folder) load without the unused one.
        unused_norm = r"^(mage\.)?norm\." if mean_pooling else r"^(mage\.)?fc_norm\."
        self._keys_to_ignore_on_load_unexpected = [*MagePreTrainedModel._keys_to_ignore_on_load_unexpected, unused_norm]
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mage = MageModel(config, add_pooling_layer=mean_pooling, add_final_norm=not mean_pooling)
        head_inputs = config.hidden_size * (config.num_tokens if config.classifier_pooling == "tokens" else 1)
        self.classifier = nn.Linear(head_inputs, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""labels: (B,) class ids, (B, num_labels) soft targets (single-label) or multi-hot targets (multi-label),
        or (B,) / (B, num_labels) float values (regression); see the class docstring for the loss."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.mage(
            pixel_values=pixel_values, input_ids=input_ids, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        features = select_features(outputs, POOLING_FEATURE_KIND[self.config.classifier_pooling])
        logits = self.classifier(features)
        loss = None if labels is None else self.classification_loss(logits, labels.to(logits.device))
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    def problem_type_for(self, labels: torch.Tensor) -> str:
        """`config.problem_type`, or (unset) what transformers infers: regression for one label, single-label for
        integer labels, multi-label otherwise."""
        if self.config.problem_type is not None:
            return self.config.problem_type
        if self.num_labels == 1:
            return "regression"
        if not labels.is_floating_point():
            return "single_label_classification"
        return "multi_label_classification"

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of (B, num_labels) `logits` against `labels` for the problem type (computed in float32)."""
        problem_type, logits = self.problem_type_for(labels), logits.float()
        if problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.float().reshape(-1))
            return F.mse_loss(logits, labels.float())
        if problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        if problem_type != "single_label_classification":
            raise ValueError(
                f"`config.problem_type` must be 'regression', 'single_label_classification' or "
                f"'multi_label_classification', got {problem_type!r}"
            )
        if labels.is_floating_point() and labels.shape == logits.shape:
            # Soft targets (mixup / cutmix): cross-entropy against a distribution over the classes.
            return torch.sum(-labels.float() * F.log_softmax(logits, dim=-1), dim=-1).mean()
        if labels.is_floating_point():
            raise ValueError(
                f"single-label `labels` must be (batch,) class ids or (batch, {self.num_labels}) soft targets, got "
                f"float {tuple(labels.shape)}"
            )
        return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
