"""Converted folders served from a Hugging Face cache by repository id, offline; and `trust_remote_code=True`
loading where mage-hf cannot be imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from mage_hf import MageForImageClassification, MageImageProcessor, MageModel, MagePipeline

PIPELINE_REPO = "mage-org/mage-tiny"
CLASSIFIER_REPO = "mage-org/mage-tiny-classifier"
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def put_in_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """Lay `folder` out as the Hub cache does: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / SNAPSHOT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return repo


@pytest.fixture(scope="module")
def hub_cache(converted_original, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("hub_cache")
    put_in_cache(cache, PIPELINE_REPO, converted_original["pretraining"])
    put_in_cache(cache, CLASSIFIER_REPO, converted_original["gap"])
    return cache


def test_hub_is_offline():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE


def test_load_by_repo_id_from_cache(hub_cache, converted_original, reference_tensors, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run remote code"))
    images = reference_tensors["images"]
    pipe = MagePipeline.from_pretrained(PIPELINE_REPO, cache_dir=hub_cache)
    tokens = pipe(batch_size=1, num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").images
    assert tokens.shape == (1, 64)

    encoder = MageModel.from_pretrained(PIPELINE_REPO, subfolder="transformer", cache_dir=hub_cache).eval()
    auto_encoder = AutoModel.from_pretrained(PIPELINE_REPO, subfolder="transformer", cache_dir=hub_cache).eval()
    assert type(auto_encoder) is MageModel
    with torch.no_grad():
        expected = encoder(pixel_values=images).pooler_output
        torch.testing.assert_close(auto_encoder(pixel_values=images).pooler_output, expected)
    torch.testing.assert_close(expected, reference_tensors["probe_gap_features"], rtol=1e-4, atol=1e-5)

    processor = AutoImageProcessor.from_pretrained(PIPELINE_REPO, subfolder="transformer", cache_dir=hub_cache)
    assert type(processor) is MageImageProcessor and processor.crop_size.height == 32
    classifier = AutoModelForImageClassification.from_pretrained(CLASSIFIER_REPO, cache_dir=hub_cache)
    assert type(classifier) is MageForImageClassification and classifier.config.num_labels == 7


def test_transformers_pipelines_by_repo_id(hub_cache, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked whether to run remote code"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    classify = pipeline("image-classification", model=CLASSIFIER_REPO, model_kwargs={"cache_dir": str(hub_cache)})
    predictions = classify(image, top_k=7)
    assert len(predictions) == 7 and predictions[0]["label"].startswith("LABEL_")
    extract = pipeline("image-feature-extraction", model=PIPELINE_REPO,
                       model_kwargs={"cache_dir": str(hub_cache), "subfolder": "transformer"})
    assert isinstance(extract.model, MageModel)
    assert np.asarray(extract(image, pool=True)).shape == (1, 64)


REMOTE_CODE_SCRIPT = r"""
import json, sys
sys.modules["mage_hf"] = None  # make sure nothing comes from the installed package
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

images = torch.tensor(json.loads(sys.argv[1]))
encoder = AutoModel.from_pretrained("%(pipeline)s", subfolder="transformer", trust_remote_code=True).eval()
classifier = AutoModelForImageClassification.from_pretrained("%(classifier)s", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("%(classifier)s", trust_remote_code=True)
image = Image.fromarray(np.arange(24 * 40 * 3, dtype=np.uint8).reshape(24, 40, 3))
classify = pipeline("image-classification", model="%(classifier)s", trust_remote_code=True)
with torch.no_grad():
    print(json.dumps({
        "modules": [type(encoder).__module__, type(classifier).__module__, type(processor).__module__],
        "pooled": encoder(pixel_values=images).pooler_output.tolist(),
        "logits": classifier(**processor(image, return_tensors="pt")).logits.tolist(),
        "top": classify(image)[0]["label"],
    }))
"""


def test_trust_remote_code_without_the_package(hub_cache, reference_tensors, tmp_path):
    """A fresh interpreter that cannot import mage_hf loads the models and processor from the copied code."""
    images = reference_tensors["images"]
    script = REMOTE_CODE_SCRIPT % {"pipeline": PIPELINE_REPO, "classifier": CLASSIFIER_REPO}
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run([sys.executable, "-I", "-c", script, json.dumps(images.tolist())], env=env,
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules.") for module in remote["modules"]), remote["modules"]
    torch.testing.assert_close(torch.tensor(remote["pooled"]), reference_tensors["probe_gap_features"], rtol=1e-4, atol=1e-5)

    classifier = MageForImageClassification.from_pretrained(CLASSIFIER_REPO, cache_dir=hub_cache).eval()
    processor = MageImageProcessor.from_pretrained(CLASSIFIER_REPO, cache_dir=hub_cache)
    image = Image.fromarray(np.arange(24 * 40 * 3, dtype=np.uint8).reshape(24, 40, 3))
    with torch.no_grad():
        logits = classifier(**processor(image, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(remote["logits"]), logits, rtol=1e-5, atol=1e-5)
    assert remote["top"] == classifier.config.id2label[int(logits.argmax())]


def test_copied_code_is_self_contained(converted_original):
    """Every relative import of the copied modules is itself in the folder."""
    import re

    pretraining = converted_original["pretraining"]
    for folder in (pretraining, pretraining / "transformer", converted_original["gap"]):
        files = {p.stem for p in folder.glob("*.py")}
        assert {"configuration_mage", "modeling_mage", "image_processing_mage", "vq_layers", "masking"} <= files
        for path in folder.glob("*.py"):
            imported = set(re.findall(r"^from \.(\w+) import", path.read_text(), flags=re.M))
            assert imported <= files, (path.name, imported - files)
        if folder != pretraining:
            auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
            assert auto_map["AutoModel"] == "modeling_mage.MageModel"
