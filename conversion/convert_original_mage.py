#!/usr/bin/env python
"""Convert an original MAGE checkpoint (github.com/LTH14/mage) into a mage-hf folder.

A pre-training checkpoint becomes a `MagePipeline` folder (`model_index.json`, `transformer/`, `vqvae/`,
`scheduler/`); a fine-tuned one a `MageForImageClassification` folder. Examples:

    python conversion/convert_original_mage.py --checkpoint mage-vitb-1600.pth --vqgan vqgan_jax_strongaug.ckpt \
        --model mage_vit_base_patch16 --output mage-vit-base
    python conversion/convert_original_mage.py --checkpoint mage-vitb-ft.pth --model vit_base_patch16 \
        --task image-classification --output mage-vit-base-ft --push-to-hub my-org/mage-vit-base-ft

`--overwrite` writes into an existing folder: it replaces (and lists) only the files the conversion writes and keeps
every other file, also inside `transformer/` and `vqvae/`. The logic lives in `mage_hf.convert_original` (shared
with `mage-hf convert`).
"""

import sys

from mage_hf.convert_original import main

if __name__ == "__main__":
    sys.exit(main())
