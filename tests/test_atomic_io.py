"""mage_hf.atomic_io: a written file is complete or absent."""

import pytest

from mage_hf.atomic_io import atomic_output_path


def test_atomic_output_path_renames_on_success_and_leaves_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "out.npz"
    with atomic_output_path(target) as partial:
        assert partial.endswith(".npz") and not target.exists()  # writers that pick a format by suffix still work
        with open(partial, "w") as handle:
            handle.write("new")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_output_path(target) as partial:
            with open(partial, "w") as handle:
                handle.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "new" and sorted(p.name for p in target.parent.iterdir()) == ["out.npz"]
