"""mage-hf: MAGE (MAsked Generative Encoder, CVPR 2023) on the Hugging Face stack."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_mage import MAGE_PRESETS, MageConfig
from .modeling_mage import (
    MageForImageClassification,
    MageForMaskedImageModeling,
    MageMaskedImageModelingOutput,
    MageModel,
    MagePreTrainedModel,
)
from .modeling_vqvae import MageVQModel
from .pipeline_mage import MagePipeline
from .scheduling_mage import MageScheduler, MageSchedulerOutput

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    """Make `AutoConfig`/`AutoModel`/... (and hence `transformers.pipeline`) resolve `model_type="mage"`."""
    AutoConfig.register("mage", MageConfig, exist_ok=True)
    AutoModel.register(MageConfig, MageModel, exist_ok=True)
    AutoModelForImageClassification.register(MageConfig, MageForImageClassification, exist_ok=True)


_register_auto_classes()

__all__ = [
    "MAGE_PRESETS",
    "MageConfig",
    "MageForImageClassification",
    "MageForMaskedImageModeling",
    "MageMaskedImageModelingOutput",
    "MageModel",
    "MagePreTrainedModel",
    "MagePipeline",
    "MageScheduler",
    "MageSchedulerOutput",
    "MageVQModel",
]
