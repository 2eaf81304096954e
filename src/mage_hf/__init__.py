"""mage-hf: MAGE (MAsked Generative Encoder, CVPR 2023) on the Hugging Face stack."""

import os

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedImageModeling,
)

from .configuration_mage import MAGE_PRESETS, MageConfig
from .image_processing_mage import MageImageProcessor
from .modeling_mage import (
    MageForImageClassification,
    MageForMaskedImageModeling,
    MageMaskedImageModelingOutput,
    MageModel,
    MagePreTrainedModel,
)
from .modeling_vqvae import MageVQModel
from .pipeline_mage import MagePipeline
from .pipeline_mage_inpaint import MageInpaintPipeline, make_outpaint_inputs
from .scheduling_mage import MageScheduler, MageSchedulerOutput

__version__ = "0.1.0"

# The pipeline folder shipped inside the package (the embedded default of `mage-hf`); may be absent in a
# source checkout until it is built.
DEFAULT_MODEL_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")


def _register_auto_classes() -> None:
    """Make the Auto classes (and hence `transformers.pipeline`) resolve `model_type="mage"`, and write `auto_map`
    + code files into every saved folder so that `trust_remote_code=True` loads it where mage-hf is not installed."""
    AutoConfig.register("mage", MageConfig, exist_ok=True)
    AutoModel.register(MageConfig, MageModel, exist_ok=True)
    AutoModelForImageClassification.register(MageConfig, MageForImageClassification, exist_ok=True)
    AutoModelForMaskedImageModeling.register(MageConfig, MageForMaskedImageModeling, exist_ok=True)
    AutoImageProcessor.register(MageConfig, image_processor_classes={"pil": MageImageProcessor}, exist_ok=True)
    MageConfig.register_for_auto_class()
    MageModel.register_for_auto_class("AutoModel")
    MageForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    MageForMaskedImageModeling.register_for_auto_class("AutoModelForMaskedImageModeling")
    MageImageProcessor.register_for_auto_class("AutoImageProcessor")


_register_auto_classes()

__all__ = [
    "DEFAULT_MODEL_PATH",
    "MAGE_PRESETS",
    "MageConfig",
    "MageForImageClassification",
    "MageForMaskedImageModeling",
    "MageImageProcessor",
    "MageInpaintPipeline",
    "MageMaskedImageModelingOutput",
    "MageModel",
    "MagePreTrainedModel",
    "MagePipeline",
    "MageScheduler",
    "MageSchedulerOutput",
    "MageVQModel",
    "make_outpaint_inputs",
]
