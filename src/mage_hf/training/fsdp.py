"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for MAGE models: which modules are shard units.

- every `MageLayer` (encoder and decoder blocks) is its own unit: its parameters are all-gathered just before its
  forward and freed after it (and again around its backward), so beyond the root only one block is ever whole;
- the token embedding (`get_input_embeddings()`, the `word_embeddings` matrix the MLM head also reads) is a unit of
  its own, as Accelerate's FSDP2 preparation makes it; `MageMLMHead` reads the matrix through the embedding
  module's forward, so it is gathered there too;
- the frozen VQ tokenizer (`mage.vqvae`) is a unit of its own, sharded but never cast: it all-gathers in float32
  whatever `mp_policy` the other units get, so pixels tokenize exactly as in float32 (as
  `_keep_in_fp32_modules_strict` loads it); it gets no gradient, so nothing of it is ever reduced;
- the root unit holds the rest: position embeddings, norms, the decoder's embedding and position table and the
  MLM head.

Every process must call the model the same number of times per step (as under DDP): each unit's gather is a
collective.
"""

from __future__ import annotations

import torch.nn as nn

from ..modeling_mage import MageLayer, MagePreTrainedModel

# The class names Accelerate's `fsdp_transformer_layer_cls_to_wrap` takes for the same wrapping.
FSDP_LAYER_CLASS_NAMES = ("MageLayer",)


def shard_mage_model(model: MagePreTrainedModel, mesh=None, **fully_shard_kwargs) -> MagePreTrainedModel:
    """Shard `model` in place with FSDP2 (units: each `MageLayer`, the token embedding, the VQ tokenizer in
    float32, then the root); returns it.

    mesh: a 1-D `DeviceMesh` to shard over (default: all processes of the default process group).
    fully_shard_kwargs: passed to every `fully_shard` call (`reshard_after_forward`, `mp_policy`,
        `offload_policy`, `ignored_params`, ...).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not isinstance(model, MagePreTrainedModel):
        raise TypeError(f"`model` must be a MagePreTrainedModel, got {type(model).__name__}")
    kwargs = {"mesh": mesh, **fully_shard_kwargs}
    for module in model.modules():
        if isinstance(module, MageLayer):
            fully_shard(module, **kwargs)
    embedding: nn.Module = model.get_input_embeddings()
    fully_shard(embedding, **kwargs)
    fully_shard(model.base_model.vqvae, **{**kwargs, "mp_policy": MixedPrecisionPolicy()})
    fully_shard(model, **kwargs)
    return model
