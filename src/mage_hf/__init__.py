"""mage-hf: MAGE (MAsked Generative Encoder, CVPR 2023) on the Hugging Face stack.

`import mage_hf` is cheap: it imports neither torch nor transformers nor diffusers. The public classes are loaded
on first access (`mage_hf.MageModel`, `from mage_hf import MagePipeline`), in the style of transformers'
`_LazyModule`; `DEFAULT_MODEL_PATH` and `__version__` need nothing.

The libraries' generic loaders still know MAGE as soon as both packages are in use, whatever the import order:

- transformers: the Auto classes (`AutoConfig`, `AutoModel`, `AutoModelForMaskedImageModeling`,
  `AutoModelForImageClassification`, `AutoImageProcessor`, hence `transformers.pipeline`) resolve
  `model_type="mage"`, and saved folders get `auto_map` + code files (`_register_auto_classes`);
- diffusers: `DiffusionPipeline.from_pretrained` resolves `MagePipeline` / `MageInpaintPipeline`
  (`_register_pipelines`, i.e. importing the pipeline modules, which register themselves).

Each registration runs at `import mage_hf` when its library is already imported (`import transformers, mage_hf`),
on first access of a mage-hf class (`from mage_hf import MageModel`: the Auto classes), or when the library is
imported after mage_hf (`import mage_hf; from transformers import AutoModel`) or a mage-hf module is imported
directly (`mage_hf.modeling_mage`, as diffusers does from `model_index.json`). The last two are the work of
`_RegistrationFinder`, an import-system finder that wraps only the loaders of the `transformers` and `diffusers`
packages and of `mage_hf.*` submodules, runs the registrations once the outermost of those imports has finished,
and removes itself from `sys.meta_path` when both are done.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The pipeline folder shipped inside the package (the embedded default of `mage-hf`); may be absent in a
# source checkout until it is built.
DEFAULT_MODEL_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_model")

logger = logging.getLogger(__name__)

# submodule -> the public names it defines (loaded on first access)
_import_structure: dict[str, list[str]] = {
    "configuration_mage": ["MAGE_PRESETS", "MageConfig"],
    "image_processing_mage": ["MageImageProcessor"],
    "modeling_mage": [
        "MageForImageClassification",
        "MageForMaskedImageModeling",
        "MageMaskedImageModelingOutput",
        "MageModel",
        "MagePreTrainedModel",
    ],
    "modeling_vqvae": ["MageVQModel"],
    "pipeline_mage": ["MagePipeline"],
    "pipeline_mage_inpaint": ["MageInpaintPipeline", "make_outpaint_inputs"],
    "scheduling_mage": ["MageScheduler", "MageSchedulerOutput"],
}
_module_of_name = {name: module for module, names in _import_structure.items() for name in names}

if TYPE_CHECKING:
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


def __getattr__(name: str):
    module_name = _module_of_name.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _register_auto_classes()
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_module_of_name))


# ---------------------------------------------------------------------------------------------- Auto classes
_registration = threading.RLock()
_registered = False
_registering = False


def _register_auto_classes(wait: bool = True) -> None:
    """Make the Auto classes (and hence `transformers.pipeline`) resolve `model_type="mage"`, and make every saved
    model folder carry the code files and an `auto_map` entry for each Auto class that fits it, so that
    `trust_remote_code=True` loads it where mage-hf is not installed. Runs once; later calls return at once.
    With `wait=False` (from inside an import) it returns when another thread is registering instead of waiting."""
    global _registered, _registering
    if _registered:
        return
    if not _registration.acquire(blocking=wait):
        return
    try:
        if _registered or _registering:  # done meanwhile, or re-entered by the imports below
            return
        _registering = True
        try:
            _register()
            _registered = True
        finally:
            _registering = False
    finally:
        _registration.release()


def _register_pipelines() -> None:
    """Make `diffusers.DiffusionPipeline.from_pretrained` resolve the MAGE pipelines (the modules register
    themselves with diffusers when imported)."""
    importlib.import_module(f"{__name__}.pipeline_mage")
    importlib.import_module(f"{__name__}.pipeline_mage_inpaint")


def _register() -> None:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForMaskedImageModeling,
    )

    from .configuration_mage import MageConfig
    from .image_processing_mage import MageImageProcessor
    from .modeling_mage import MageForImageClassification, MageForMaskedImageModeling, MageModel, MagePreTrainedModel

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
    if not getattr(MagePreTrainedModel.save_pretrained, "_writes_full_auto_map", False):
        MagePreTrainedModel.save_pretrained = _save_with_full_auto_map(MagePreTrainedModel.save_pretrained)


def _save_with_full_auto_map(save_pretrained):
    """`save_pretrained` that lists every Auto class that fits a MAGE transformer folder in its `auto_map`
    (`remote_code.TRANSFORMER_AUTO_MAP`); transformers itself writes only the saved class's own Auto class. The
    classes named all live in `modeling_mage.py`, which transformers copies with its relative imports."""
    import functools

    @functools.wraps(save_pretrained)
    def save(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:  # remote code is on for this class (`register_for_auto_class`)
            from .remote_code import TRANSFORMER_AUTO_MAP

            # entries already there win: a folder loaded from the Hub may point at code in another repository
            self.config.auto_map = {**TRANSFORMER_AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return save_pretrained(self, save_directory, *args, **kwargs)

    save._writes_full_auto_map = True
    return save


class _NotifyingLoader:
    """Runs the wrapped loader, then lets `_RegistrationFinder` register once no watched import is running.
    Every other attribute (`get_source`, `get_resource_reader`, ...) is the wrapped loader's."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        if name == "_loader":
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        _RegistrationFinder.depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            _RegistrationFinder.depth -= 1
        _RegistrationFinder.after_import()


class _RegistrationFinder:
    """Watches the imports of the `transformers` and `diffusers` packages (their `__init__` are lazy) and of
    `mage_hf.*` submodules. When the outermost of them finishes, runs the registration of every library that is
    imported by then (`_REGISTRATIONS`). Waiting for the outermost import matters: registering inside
    `mage_hf.configuration_mage`'s own import of transformers would import that half-initialised module again."""

    depth = 0
    pending: dict[str, object] = {}  # library -> its registration, until it has run

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending and not fullname.startswith(f"{__name__}."):
            return None
        for finder in list(sys.meta_path):
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotifyingLoader(spec.loader)
                return spec
        return None

    @classmethod
    def after_import(cls) -> None:
        if cls.depth:
            return
        for library, register in list(cls.pending.items()):
            if library not in sys.modules or cls.pending.get(library) is None:
                continue
            del cls.pending[library]
            try:
                register()
            except Exception as error:  # importing a library must not fail because of mage-hf
                logger.warning("mage_hf: could not register the MAGE classes with %s: %s", library, error)
        if not cls.pending:
            cls.uninstall()

    @classmethod
    def install(cls, registrations: dict) -> None:
        cls.pending = dict(registrations)
        if not any(isinstance(finder, cls) for finder in sys.meta_path):
            sys.meta_path.insert(0, cls())
        cls.after_import()  # the libraries already imported

    @classmethod
    def uninstall(cls) -> None:
        sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, cls)]


_REGISTRATIONS = {"transformers": lambda: _register_auto_classes(wait=False), "diffusers": _register_pipelines}
_RegistrationFinder.install(_REGISTRATIONS)

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
