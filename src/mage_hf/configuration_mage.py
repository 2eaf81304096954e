"""`MageConfig`: sizes, vocabulary, masking and pooling of a MAGE model (tokenizer settings included)."""

from __future__ import annotations

import copy

from transformers import PreTrainedConfig

from .vq_layers import DEFAULT_VQ_CONFIG, vq_downsample_factor

# What `MageForImageClassification`'s head can read (see `MageConfig.classifier_pooling`).
CLASSIFIER_POOLINGS = ("mean", "cls", "tokens")


class MageConfig(PreTrainedConfig):
    r"""Configuration of a MAGE model (`MageModel`, `MageForMaskedImageModeling`, `MageForImageClassification`).

    The defaults are the original `mage_vit_base_patch16`. Use `MageConfig.from_preset(name)` for the other
    original models.

    Vocabulary (as in the original): ids `[0, codebook_size)` are VQ codes, the next `num_class_tokens` ids
    are class tokens (`codebook_size + class_id`), and the last id is the mask token. Position 0 of every
    sequence holds a class token: the "fake" class `fake_class_label` for unconditional use, or a real
    class for class-conditional models. `vocab_size` and `mask_token_id` are derived from this layout (setting
    `vocab_size` to another value is refused); `model.resize_class_tokens(num_classes)` changes the class tokens
    of a model and its config together.

    Args:
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: the ViT encoder.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads, decoder_intermediate_size:
            the MAGE decoder (only used by `MageForMaskedImageModeling`).
        hidden_act: MLP activation (`"gelu"`, the exact erf GELU, as the original).
        hidden_dropout_prob: dropout after attention projections and in the MLP (0.1 in pre-training).
        attention_probs_dropout_prob: dropout on attention probabilities (0.1 in pre-training).
        embedding_dropout_prob: dropout after the token embedding LayerNorm (0.1 in the original).
        drop_path_rate: stochastic depth, linearly increasing over encoder layers (fine-tuning).
        layer_norm_eps: LayerNorm epsilon (1e-6 everywhere in the original).
        qkv_bias: bias in the fused query/key/value projection.
        initializer_range: std of the normal init of embeddings and learned position embeddings.
        image_size: input image side in pixels; the token grid is `image_size // tokenizer downsampling`.
        num_channels: image channels.
        image_mean, image_std: per-channel statistics the model's `pixel_values` are normalised with. `None` (the
            default, as in MAGE pre-training and linear probing) means raw pixels in [0, 1]. The original
            fine-tuned classifiers were trained and evaluated on ImageNet-normalised pixels fed straight to the
            VQGAN, so converted classifiers set these (and their image processor normalises likewise).
        vqvae_config: the VQ tokenizer's settings (the keys of `MageVQModel`'s config). The transformer models
            carry the VQ encoder and codebook so they can tokenize pixels themselves.
        num_class_tokens: class tokens in the vocabulary (1000 in the original).
        fake_class_label: the id at position 0 of unconditional sequences (default `codebook_size + 76`,
            the original's `codebook_size + 1100 - 1024`).
        max_position_embeddings: learned positions of the token embedding (257 in the original, whatever
            the grid); must be at least `1 + num_tokens`.
        mask_ratio_min, mask_ratio_max, mask_ratio_mean, mask_ratio_std: the truncated Gaussian the
            pre-training mask ratio is drawn from (once per batch). `mask_ratio_min` of the tokens are
            also dropped from the encoder input.
        label_smoothing: label smoothing of the masked-token loss (over codebook logits only).
        class_conditional: whether position 0 carries the real class during pre-training.
        class_dropout_prob: probability of replacing the real class by the fake one (for guidance).
        classifier_pooling: what `MageForImageClassification`'s linear head reads: `"mean"` (mean of image tokens
            + `fc_norm`, the original), `"cls"` (position 0 after `norm`) or `"tokens"` (every image token after
            `norm`, flattened in grid order: `num_tokens * hidden_size` inputs; the few-shot recipe's head).
        contrastive_projection_dim, contrastive_temperature, contrastive_loss_weight: MAGE-C's projection
            head and its InfoNCE loss (used when pre-training with `--contrastive`).
    """

    model_type = "mage"

    def __init__(
        self,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        decoder_hidden_size: int = 768,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 16,
        decoder_intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        embedding_dropout_prob: float = 0.1,
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        initializer_range: float = 0.02,
        image_size: int = 256,
        num_channels: int = 3,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        vqvae_config: dict | None = None,
        num_class_tokens: int = 1000,
        fake_class_label: int | None = None,
        max_position_embeddings: int = 257,
        mask_ratio_min: float = 0.5,
        mask_ratio_max: float = 1.0,
        mask_ratio_mean: float = 0.55,
        mask_ratio_std: float = 0.25,
        label_smoothing: float = 0.1,
        class_conditional: bool = False,
        class_dropout_prob: float = 0.1,
        classifier_pooling: str = "mean",
        contrastive_projection_dim: int = 256,
        contrastive_temperature: float = 0.2,
        contrastive_loss_weight: float = 0.1,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.embedding_dropout_prob = embedding_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        self.image_size = image_size
        self.num_channels = num_channels
        self.image_mean = list(image_mean) if image_mean is not None else None
        self.image_std = list(image_std) if image_std is not None else None
        self.vqvae_config = {**DEFAULT_VQ_CONFIG, **(vqvae_config or {})}
        self.num_class_tokens = num_class_tokens
        self.fake_class_label = self.codebook_size + 76 if fake_class_label is None else fake_class_label
        self.max_position_embeddings = max_position_embeddings
        self.mask_ratio_min = mask_ratio_min
        self.mask_ratio_max = mask_ratio_max
        self.mask_ratio_mean = mask_ratio_mean
        self.mask_ratio_std = mask_ratio_std
        self.label_smoothing = label_smoothing
        self.class_conditional = class_conditional
        self.class_dropout_prob = class_dropout_prob
        self.classifier_pooling = classifier_pooling
        self.contrastive_projection_dim = contrastive_projection_dim
        self.contrastive_temperature = contrastive_temperature
        self.contrastive_loss_weight = contrastive_loss_weight
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        for prefix in ("", "decoder_"):
            hidden, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_attention_heads")
            if hidden % heads:
                raise ValueError(f"`{prefix}hidden_size` ({hidden}) must be divisible by `{prefix}num_attention_heads` ({heads})")
        factor = self.token_downsample_factor
        if self.image_size % factor:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of the tokenizer's downsampling factor ({factor})"
            )
        if self.max_position_embeddings < 1 + self.num_tokens:
            raise ValueError(
                f"`max_position_embeddings` ({self.max_position_embeddings}) must be at least 1 + num_tokens "
                f"({1 + self.num_tokens}) for image_size {self.image_size}"
            )
        if not self.codebook_size <= self.fake_class_label < self.mask_token_id:
            raise ValueError(
                f"`fake_class_label` ({self.fake_class_label}) must be a class token id in "
                f"[{self.codebook_size}, {self.mask_token_id - 1}]"
            )
        if not 0 < self.mask_ratio_min <= self.mask_ratio_max <= 1:
            raise ValueError("`mask_ratio_min` and `mask_ratio_max` must satisfy 0 < min <= max <= 1")
        if (self.image_mean is None) != (self.image_std is None):
            raise ValueError("`image_mean` and `image_std` must be given together (or both left None)")
        if self.image_mean is not None and not len(self.image_mean) == len(self.image_std) == self.num_channels:
            raise ValueError(f"`image_mean` and `image_std` must have {self.num_channels} values (one per channel)")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"`classifier_pooling` must be one of {CLASSIFIER_POOLINGS}, got {self.classifier_pooling!r}")

    # Derived quantities: never stored, so they cannot contradict the settings above.
    @property
    def codebook_size(self) -> int:
        return int(self.vqvae_config["codebook_size"])

    @property
    def vocab_size(self) -> int:
        """Codebook + class tokens + 1 mask token (2025 for the original)."""
        return self.codebook_size + self.num_class_tokens + 1

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        # Derived from the layout, so it cannot be set on its own (setting the same value is a no-op).
        if value != self.vocab_size:
            raise ValueError(
                f"`vocab_size` is derived (codebook_size {self.codebook_size} + num_class_tokens "
                f"{self.num_class_tokens} + 1 mask token = {self.vocab_size}), got {value}; change `num_class_tokens` "
                "instead, or call `model.resize_class_tokens(num_classes)` on a model"
            )

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - 1

    @property
    def token_downsample_factor(self) -> int:
        return vq_downsample_factor(self.vqvae_config["channel_multipliers"])

    @property
    def token_grid_size(self) -> int:
        """Tokens along one side of the grid (16 for 256 px and the original VQGAN)."""
        return self.image_size // self.token_downsample_factor

    @property
    def num_tokens(self) -> int:
        return self.token_grid_size**2

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MageConfig":
        """A config equal to one of the original model factories (see `MAGE_PRESETS`)."""
        if name not in MAGE_PRESETS:
            raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(MAGE_PRESETS)}")
        return cls(**{**copy.deepcopy(MAGE_PRESETS[name]), **overrides})


_VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_VIT_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
# The fine-tuned classifiers (`models_vit_mage.vit_*_patch16`) are timm ViTs: no dropout in the blocks,
# stochastic depth 0.1 (B) / 0.2 (L), global average pooling + fc_norm.
_CLASSIFIER = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_pooling="mean")

MAGE_PRESETS: dict[str, dict] = {
    "mage_vit_base_patch16": dict(
        **_VIT_B, decoder_hidden_size=768, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
        decoder_intermediate_size=3072,
    ),
    "mage_vit_large_patch16": dict(
        **_VIT_L, decoder_hidden_size=1024, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
        decoder_intermediate_size=4096,
    ),
    "vit_base_patch16": dict(**_VIT_B, **_CLASSIFIER, drop_path_rate=0.1),
    "vit_large_patch16": dict(**_VIT_L, **_CLASSIFIER, drop_path_rate=0.2),
}
