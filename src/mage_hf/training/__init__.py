"""Training utilities for the example scripts: data loading and augmentations, tokenizer losses, optimizer
parameter groups, LARS, Trainer subclasses and callbacks, few-shot episodes.

Import the submodules you need (`mage_hf.training.data`, `.transforms`, ...); nothing here is loaded by
`import mage_hf`.
"""
