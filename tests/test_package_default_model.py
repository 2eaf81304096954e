"""examples/package_default_model.py: what ships from a training folder, the kept model card, and the refusal to
replace a folder without being asked."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from package_default_model import main, package  # noqa: E402


def _training_folder(root: Path) -> Path:
    source = root / "default_mage"
    for component in ("transformer", "vqvae", "scheduler"):
        (source / component).mkdir(parents=True)
        (source / component / "config.json").write_text(json.dumps({"name": component, "auto_map": {"x": "y"}}))
    (source / "transformer" / "model.safetensors").write_bytes(b"weights")
    (source / "transformer" / "modeling_mage.py").write_text("# remote code copy\n")
    (source / "model_index.json").write_text(json.dumps({"_class_name": "MagePipeline"}))
    (source / "checkpoint-500").mkdir()
    (source / "checkpoint-500" / "optimizer.pt").write_bytes(b"state")
    (source / "trainer_state.json").write_text("{}")
    return source


def test_ships_weights_and_configs_only_and_keeps_the_model_card(tmp_path):
    source = _training_folder(tmp_path)
    target = tmp_path / "default_model"
    (target / "transformer").mkdir(parents=True)
    (target / "transformer" / "old.safetensors").write_bytes(b"old")
    (target / "README.md").write_text("# card\n")
    files = package(source, target)
    shipped = {str(path.relative_to(target)) for path in files}
    assert shipped == {"README.md", "model_index.json", "scheduler/config.json", "transformer/config.json",
                       "transformer/model.safetensors", "vqvae/config.json"}
    assert (target / "README.md").read_text() == "# card\n"
    assert all("auto_map" not in json.loads((target / name).read_text()) for name in shipped if name.endswith(".json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default_mage", "default_model"]  # no staging left


def test_refuses_to_replace_without_yes_when_it_cannot_ask(tmp_path, monkeypatch, capsys):
    source = _training_folder(tmp_path)
    target = tmp_path / "default_model"
    target.mkdir()
    (target / "model_index.json").write_text("{}")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main([str(source), "--target", str(target)])
    assert exit_info.value.code == 2
    assert "--yes" in capsys.readouterr().err
    assert (target / "model_index.json").read_text() == "{}"  # untouched
    assert main([str(source), "--target", str(target), "--yes"]) == 0
    assert (target / "transformer" / "model.safetensors").read_bytes() == b"weights"


def test_names_a_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "half"), "--target", str(tmp_path / "out")])
    assert "lacks ['scheduler', 'transformer', 'vqvae']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
