#!/usr/bin/env python
"""Copy a trained pipeline folder into the package as the embedded default model (the last stage of
`examples/train_default_model.sh`).

    python examples/package_default_model.py runs/default_mage [--target DIR] [--yes]

The package ships the weights and configs only: `model_index.json`, `scheduler/`, `transformer/`, `vqvae/`, without
checkpoints, remote-code copies of mage_hf's modules or `auto_map` entries (the installed mage_hf registers its Auto
classes itself). The target's model card (`README.md`) is kept: training writes none. An existing target is
replaced only after a yes at the prompt, or with `--yes`; without a terminal to ask on, `--yes` is required.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

logger = logging.getLogger("package_default_model")

SHIPPED_ENTRIES = ("model_index.json", "scheduler", "transformer", "vqvae")
MODEL_CARD = "README.md"


def package(source: Path, target: Path) -> list[Path]:
    """Replace `target` with the shipped entries of `source`; returns the files written."""
    missing = [name for name in SHIPPED_ENTRIES if not (source / name).exists()]
    if missing:
        raise ValueError(f"source {str(source)!r} is not a pipeline folder: it lacks {missing}")
    card = target / MODEL_CARD
    card_text = card.read_text() if card.is_file() else None
    staging = target.with_name(target.name + ".packaging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SHIPPED_ENTRIES:
        entry = source / name
        if entry.is_dir():
            shutil.copytree(entry, staging / name, ignore=lambda d, names: [
                n for n in names if n.endswith(".py") or n == "__pycache__"])
        else:
            shutil.copy2(entry, staging / name)
    for config_file in staging.rglob("*.json"):
        config = json.loads(config_file.read_text())
        if isinstance(config, dict) and config.pop("auto_map", None) is not None:
            config_file.write_text(json.dumps(config, indent=2) + "\n")
    if card_text is not None:
        (staging / MODEL_CARD).write_text(card_text)
    # Swap in whole: an interrupted packaging leaves either the old folder or the new one.
    if target.exists():
        retired = target.with_name(target.name + ".replaced")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    else:
        staging.rename(target)
    return sorted(path for path in target.rglob("*") if path.is_file())


def main(argv=None) -> int:
    logging.basicConfig(format="%(message)s", level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a trained MagePipeline folder (pretrain.py's output_dir)")
    parser.add_argument("--target", help="default: mage_hf.DEFAULT_MODEL_PATH")
    parser.add_argument("--yes", action="store_true", help="replace an existing target without asking")
    args = parser.parse_args(argv)
    if args.target is None:
        import mage_hf

        args.target = mage_hf.DEFAULT_MODEL_PATH
    source, target = Path(args.source), Path(args.target)
    if target.exists() and not args.yes:
        if not sys.stdin.isatty():
            parser.error(f"--target {str(target)!r} exists; pass --yes to replace it (no terminal to ask on)")
        if input(f"replace {target}? [y/N] ").strip().lower() != "y":
            logger.info("kept the existing default model")
            return 0
    try:
        files = package(source, target)
    except ValueError as error:
        parser.error(str(error))
    size = sum(path.stat().st_size for path in files)
    logger.info(f"copied {source} to {target}: {len(files)} files, {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
