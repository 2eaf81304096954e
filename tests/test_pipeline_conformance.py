"""Pipeline folders load through the generic loaders (issue 11, items 9-11): `DiffusionPipeline.from_pretrained`
with mage-hf installed, the same with `trust_remote_code=True` where mage-hf cannot be imported, the processor
kept by every save, and every fitting Auto class listed in `auto_map`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import PIL.Image
import pytest
import torch
import transformers
from diffusers import DiffusionPipeline
from test_pipeline_mage import make_tiny_pipeline

import mage_hf
from mage_hf import MageImageProcessor, MageInpaintPipeline, MagePipeline

AUTO_CLASSES = ["AutoModel", "AutoModelForMaskedImageModeling", "AutoModelForImageClassification"]


@pytest.fixture(scope="module")
def default_pipe():
    pipe = MagePipeline.from_pretrained(mage_hf.DEFAULT_MODEL_PATH)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents(pipe, seed: int = 0):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(seed), output_type="latent").images


def run_python(code: str, tmp_path, block_mage_hf: bool) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter, offline, with its own module cache; `block_mage_hf` makes
    `import mage_hf` fail there (as where it is not installed)."""
    prelude = "import sys\nsys.modules['mage_hf'] = None  # import mage_hf -> ImportError\n" if block_mage_hf else ""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=600)


# ----------------------------------------------------------------------------- item 9: DiffusionPipeline loading
def test_diffusion_pipeline_loads_the_default_folder_after_import_mage_hf(tmp_path):
    code = """
        import mage_hf
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained(mage_hf.DEFAULT_MODEL_PATH)
        print(type(pipe).__module__, type(pipe).__name__)
    """
    result = run_python(code, tmp_path, block_mage_hf=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["mage_hf.pipeline_mage", "MagePipeline"]


def test_saved_folder_loads_with_diffusion_pipeline(tmp_path, default_pipe):
    default_pipe.save_pretrained(tmp_path / "saved")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved")  # installed code; no trust_remote_code needed
    assert type(loaded) is MagePipeline and type(loaded.transformer) is type(default_pipe.transformer)
    assert torch.equal(latents(loaded), latents(default_pipe))


def test_hub_folder_uses_the_installed_code_when_there_is_one(tmp_path, default_pipe):
    default_pipe.save_pretrained(tmp_path / "hub", include_code=True)
    again = MagePipeline.from_pretrained(tmp_path / "hub")  # no remote code runs
    assert type(again) is MagePipeline and type(again.vqvae).__module__ == "mage_hf.modeling_vqvae"
    assert torch.equal(latents(again), latents(default_pipe))
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers' own rule for code in a folder
        DiffusionPipeline.from_pretrained(tmp_path / "hub")


def test_inpaint_pipeline_folder_names_its_class(tmp_path):
    pipe = make_tiny_pipeline(MageInpaintPipeline)
    pipe.save_pretrained(tmp_path / "inpaint")
    index = json.loads((tmp_path / "inpaint" / "model_index.json").read_text())
    assert index["_class_name"] == "MageInpaintPipeline"
    assert index["transformer"] == ["mage_hf.modeling_mage", "MageForMaskedImageModeling"]
    assert type(DiffusionPipeline.from_pretrained(tmp_path / "inpaint")) is MageInpaintPipeline


def test_hub_folder_loads_without_mage_hf(tmp_path, default_pipe):
    folder = tmp_path / "hub"
    default_pipe.save_pretrained(folder, include_code=True)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["mage_pipeline", "MagePipeline"]
    expected = latents(default_pipe).tolist()
    code = f"""
        import json, torch, PIL.Image
        try:
            import mage_hf
        except ImportError:
            print("no mage_hf")
        from diffusers import DiffusionPipeline
        try:
            DiffusionPipeline.from_pretrained({str(folder)!r})
        except ValueError as error:
            print("refused:", "trust_remote_code=True" in str(error))
        pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        ids = pipe(batch_size=2, num_inference_steps=4, generator=torch.manual_seed(0), output_type="latent").images
        print(json.dumps([type(pipe).__name__, type(pipe).__module__.startswith("mage_hf"), ids.tolist()]))
        import transformers
        for name in {AUTO_CLASSES + ["AutoImageProcessor"]!r}:
            model = getattr(transformers, name).from_pretrained({str(folder / "transformer")!r}, trust_remote_code=True)
            print(name, type(model).__name__)
        extractor = transformers.pipeline("image-feature-extraction", model={str(folder / "transformer")!r},
                                          trust_remote_code=True)
        print("features", len(extractor(PIL.Image.new("RGB", (40, 40)))[0]))
    """
    result = run_python(code, tmp_path, block_mage_hf=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "no mage_hf" and lines[1] == "refused: True"
    name, from_mage_hf, ids = json.loads(lines[2])
    assert name == "MagePipeline" and not from_mage_hf and ids == expected
    assert lines[3:7] == ["AutoModel MageModel", "AutoModelForMaskedImageModeling MageForMaskedImageModeling",
                          "AutoModelForImageClassification MageForImageClassification",
                          "AutoImageProcessor MageImageProcessor"]
    assert lines[7] == f"features {1 + default_pipe.transformer.config.num_tokens}"
    assert "Expected types" not in result.stderr  # components and pipeline share one copy of the code


def test_push_to_hub_implies_include_code(tmp_path, default_pipe, monkeypatch):
    pushed = {}
    monkeypatch.setattr(MagePipeline, "_push_folder", lambda self, folder, **kw: pushed.update(folder=folder, **kw))
    default_pipe.save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="user/mage-test")
    assert pushed == {"folder": tmp_path / "pushed", "repo_id": "user/mage-test"}
    assert (tmp_path / "pushed" / "mage_pipeline.py").is_file()
    assert (tmp_path / "pushed" / "transformer" / "mage_component.py").is_file()


def test_save_with_a_variant_names_every_component_file(tmp_path):
    """diffusers passes `variant` to a component only when its `save_pretrained` signature names it."""
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(tmp_path, variant="fp16")
    for component in ("transformer", "vqvae"):
        weights = [name for name in os.listdir(tmp_path / component) if name.endswith((".safetensors", ".bin"))]
        assert weights and all(name.split(".")[1] == "fp16" for name in weights), (component, weights)
    loaded = MagePipeline.from_pretrained(tmp_path, variant="fp16")
    assert torch.equal(loaded.transformer.mage.embeddings.word_embeddings.weight,
                       pipe.transformer.mage.embeddings.word_embeddings.weight)


# ----------------------------------------------------------------------------- item 10: the processor survives saves
def test_save_keeps_the_transformer_processor(tmp_path, default_pipe):
    shipped = MageImageProcessor.from_pretrained(mage_hf.DEFAULT_MODEL_PATH, subfolder="transformer")
    default_pipe.save_pretrained(tmp_path / "first")
    MagePipeline.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")  # a save of a save
    for folder in ("first", "second"):
        saved = MageImageProcessor.from_pretrained(tmp_path / folder, subfolder="transformer")
        assert saved.resample == shipped.resample and saved.crop_size == shipped.crop_size
        extractor = transformers.pipeline("image-feature-extraction", model=str(tmp_path / folder / "transformer"))
        features = extractor(PIL.Image.new("RGB", (48, 40), (10, 200, 30)), return_tensors=True)
        assert features.shape == (1, 1 + default_pipe.transformer.config.num_tokens,
                                  default_pipe.transformer.config.hidden_size)


def test_hand_built_pipeline_saves_a_processor_for_its_size(tmp_path):
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "tiny")
    processor = MageImageProcessor.from_pretrained(tmp_path / "tiny" / "transformer")
    size = pipe.transformer.config.image_size
    assert processor(PIL.Image.new("RGB", (30, 20)), return_tensors="pt").pixel_values.shape == (1, 3, size, size)


# ----------------------------------------------------------------------------- item 11: auto_map lists every Auto class
def test_transformer_folder_lists_every_fitting_auto_class(tmp_path, default_pipe):
    default_pipe.save_pretrained(tmp_path / "saved")
    transformer = tmp_path / "saved" / "transformer"
    auto_map = json.loads((transformer / "config.json").read_text())["auto_map"]
    assert sorted(auto_map) == sorted(["AutoConfig"] + AUTO_CLASSES)
    processor_map = json.loads((transformer / "preprocessor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoImageProcessor": "image_processing_mage.MageImageProcessor"}
    for reference in list(auto_map.values()) + list(processor_map.values()):
        assert (transformer / f"{reference.split('.')[0]}.py").is_file()
    for name in AUTO_CLASSES:  # with mage-hf installed, the same folder loads without remote code
        model = getattr(transformers, name).from_pretrained(transformer)
        assert type(model).__module__ == "mage_hf.modeling_mage"


# ----------------------------------------------------------------------------- diffusers' PipelineTesterMixin batching
def test_class_labels_batched_as_the_common_tests_do():
    """diffusers' common tests batch `class_labels=[1]` as `[[1]] * B` (DiTPipeline flattens it): (B, 1) inputs
    mean one label per image."""
    pipe = make_tiny_pipeline(class_conditional=True)
    flat = pipe(class_labels=[1, 2], num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").images
    for nested in ([[1], [2]], torch.tensor([[1], [2]])):
        again = pipe(class_labels=nested, num_inference_steps=2, generator=torch.manual_seed(0),
                     output_type="latent").images
        assert torch.equal(again, flat)
