"""Every command-line script prints its `--help` and exits 0.

argparse formats help strings with `%`-interpolation, so a help text with a bare `%` ("30% more time") raises
`ValueError` only when `--help` is asked for: `train_tokenizer.py --help` crashed that way. The scripts run
in-process (`runpy`), so the test costs no interpreter start-ups.
"""

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    str(path.relative_to(ROOT))
    for folder in ("examples", "benchmarks", "conversion")
    for path in (ROOT / folder).glob("*.py")
    if '__name__ == "__main__"' in path.read_text()
)


def test_the_scripts_are_found():
    assert "examples/train_tokenizer.py" in SCRIPTS
    assert "conversion/convert_original_mage.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_exits_cleanly(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    monkeypatch.syspath_prepend(str((ROOT / script).parent))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert exit_info.value.code in (0, None)
    assert "usage:" in printed.getvalue()
