"""Start-up: `import mage_hf` and `mage-hf --help` import no heavy library, and every documented way of combining
mage_hf with transformers and diffusers still finds the MAGE classes (the registrations are lazy). Saved folders
list every Auto class that fits them and load with `trust_remote_code=True` where mage_hf cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_pipeline_mage import make_tiny_pipeline

import mage_hf
from mage_hf import MageForImageClassification, MageForMaskedImageModeling, MageModel

HEAVY = ("torch", "transformers", "diffusers", "numpy", "PIL")
TRANSFORMER_DIR = os.path.join(mage_hf.DEFAULT_MODEL_PATH, "transformer")
FITTING_AUTO_CLASSES = {"AutoConfig", "AutoModel", "AutoModelForMaskedImageModeling", "AutoModelForImageClassification"}


def python(code: str, env: dict | None = None, timeout: int = 300) -> str:
    """Run `code` in a fresh interpreter; its last stdout line."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env or {}))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_import_is_light():
    loaded = json.loads(python(f"""
        import json, sys
        import mage_hf
        print(json.dumps([[m for m in {HEAVY!r} if m in sys.modules], mage_hf.__version__, mage_hf.DEFAULT_MODEL_PATH]))
    """))
    assert loaded == [[], mage_hf.__version__, mage_hf.DEFAULT_MODEL_PATH]


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["inpaint", "--help"], ["embed", "--help"]])
def test_help_is_light(argv):
    loaded = json.loads(python(f"""
        import json, sys
        from mage_hf.cli import main
        try:
            main({argv!r})
        except SystemExit:
            pass
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
    """))
    assert loaded == []


def test_console_script_help_imports_no_heavy_library():
    script = Path(sys.executable).with_name("mage-hf")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and "generate" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert "mage_hf.cli" in imported and not imported & {"torch", "transformers", "diffusers"}


def test_convert_help_lists_the_conversion_options():
    from mage_hf.cli import build_parser

    convert = build_parser("convert")._subparsers._group_actions[0].choices["convert"]
    assert "--checkpoint" in convert.format_help()


def test_public_names_resolve():
    for name in mage_hf.__all__:
        assert getattr(mage_hf, name) is not None
    assert set(mage_hf.__all__) <= set(dir(mage_hf))
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        mage_hf.NotAThing


# Each documented (or natural) order of imports, in a fresh interpreter: the MAGE classes must be found.
REGISTRATION_PATHS = {
    "README: import transformers, mage_hf; transformers.pipeline": f"""
        import transformers, mage_hf
        extractor = transformers.pipeline("image-feature-extraction", model={TRANSFORMER_DIR!r})
        print(type(extractor.model).__name__)
    """,
    "import mage_hf; import transformers; AutoModel": f"""
        import mage_hf
        import transformers
        print(type(transformers.AutoModel.from_pretrained({TRANSFORMER_DIR!r})).__name__)
    """,
    "import mage_hf; from transformers import AutoConfig, AutoImageProcessor": f"""
        import mage_hf
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForMaskedImageModeling
        names = [type(AutoConfig.from_pretrained({TRANSFORMER_DIR!r})).__name__,
                 type(AutoImageProcessor.from_pretrained({TRANSFORMER_DIR!r})).__name__,
                 type(AutoModelForMaskedImageModeling.from_pretrained({TRANSFORMER_DIR!r})).__name__]
        print(",".join(names))
    """,
    "a mage_hf module imported directly, then AutoModel": f"""
        from mage_hf.modeling_mage import MageForMaskedImageModeling
        import inspect, sys
        from transformers import AutoModel
        assert "class MageForMaskedImageModeling" in inspect.getsource(MageForMaskedImageModeling)
        assert sys.modules["mage_hf"]._registered  # the wrapped loaders keep everything else working
        print(type(AutoModel.from_pretrained({TRANSFORMER_DIR!r})).__name__)
    """,
    "README: from mage_hf import MageModel, MageImageProcessor": f"""
        from mage_hf import MageModel, MageImageProcessor, DEFAULT_MODEL_PATH
        model = MageModel.from_pretrained(DEFAULT_MODEL_PATH, subfolder="transformer")
        processor = MageImageProcessor.from_pretrained(DEFAULT_MODEL_PATH, subfolder="transformer")
        print(type(model).__name__)
    """,
    "import mage_hf; DiffusionPipeline.from_pretrained": """
        import mage_hf
        from diffusers import DiffusionPipeline
        print(type(DiffusionPipeline.from_pretrained(mage_hf.DEFAULT_MODEL_PATH)).__name__)
    """,
}
EXPECTED = {
    "import mage_hf; from transformers import AutoConfig, AutoImageProcessor":
        "MageConfig,MageImageProcessor,MageForMaskedImageModeling",
    "import mage_hf; DiffusionPipeline.from_pretrained": "MagePipeline",
}


@pytest.mark.parametrize("path", list(REGISTRATION_PATHS))
def test_registration_paths(path):
    assert python(REGISTRATION_PATHS[path]) == EXPECTED.get(path, "MageModel")


# ------------------------------------------------------------------------------------------ remote code
BLOCK_MAGE_HF = '''
import sys


class _NoMageHf:
    """mage-hf is not installed here: importing it fails as it would."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "mage_hf" or fullname.startswith("mage_hf."):
            raise ImportError(f"No module named {fullname!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, _NoMageHf())
'''

REMOTE_SCRIPT = """
import json, sys
import torch
try:
    import mage_hf
except ImportError:
    pass
else:
    raise SystemExit("mage_hf was importable")
from transformers import AutoImageProcessor, AutoModel

pixels = torch.tensor(json.loads(sys.argv[1]))
out = {}
for name, folder in json.loads(sys.argv[2]).items():
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        out[name] = [type(model).__module__, type(model).__name__, model(pixel_values=pixels).pooler_output.tolist()]
out["processor"] = type(AutoImageProcessor.from_pretrained(json.loads(sys.argv[2])["pipeline transformer/"],
                                                           trust_remote_code=True)).__name__
print(json.dumps(out))
"""


def test_saved_folders_load_without_mage_hf(tiny_config, tiny_images, tmp_path):
    torch.manual_seed(0)
    folders = {
        "MageModel": tmp_path / "encoder",
        "MageForMaskedImageModeling": tmp_path / "masked_image_modeling",
        "MageForImageClassification": tmp_path / "classifier",
        "pipeline transformer/": tmp_path / "pipeline" / "transformer",
    }
    models = {
        "MageModel": MageModel(tiny_config).eval(),
        "MageForMaskedImageModeling": MageForMaskedImageModeling(tiny_config).eval(),
        "MageForImageClassification": MageForImageClassification(tiny_config).eval(),
    }
    for name, model in models.items():
        model.save_pretrained(folders[name])
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipeline")
    models["pipeline transformer/"] = pipe.transformer
    for name, folder in folders.items():
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert FITTING_AUTO_CLASSES <= set(auto_map), (name, auto_map)
        assert auto_map["AutoModel"] == "modeling_mage.MageModel"
    processor_config = json.loads((folders["pipeline transformer/"] / "preprocessor_config.json").read_text())
    assert "AutoImageProcessor" in processor_config["auto_map"]

    blocker = tmp_path / "no_mage_hf"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_MAGE_HF)
    env = dict(os.environ, PYTHONPATH=str(blocker), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, json.dumps(tiny_images.tolist()),
         json.dumps({name: str(folder) for name, folder in folders.items()})],
        capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote.pop("processor") == "MageImageProcessor"
    for name, (module, class_name, pooled) in remote.items():
        assert module.startswith("transformers_modules.") and class_name == "MageModel", (name, module)
        model = models[name]
        encoder = model if isinstance(model, MageModel) else model.mage
        with torch.no_grad():
            expected = encoder(pixel_values=tiny_images).pooler_output
        torch.testing.assert_close(torch.tensor(pooled), expected, rtol=1e-5, atol=1e-6)
