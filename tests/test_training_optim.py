"""Parameter groups (weight decay as the original, layer-wise lr decay) and LARS."""

import pytest
import torch

from mage_hf import MageConfig, MageForImageClassification, MageForMaskedImageModeling
from mage_hf.training.lars import LARS
from mage_hf.training.optim import absolute_learning_rate, decay_parameter_names, param_groups_layer_decay

from conftest import tiny_config_kwargs


def test_weight_decay_follows_the_original_rule():
    model = MageForMaskedImageModeling(MageConfig(**tiny_config_kwargs()))
    names = set(decay_parameter_names(model))
    assert "mage.encoder.layers.0.attn.qkv.weight" in names
    assert "mage.embeddings.word_embeddings.weight" in names
    assert "decoder.position_embeddings" in names  # 3-D learned position embedding decays, as in the original
    assert not any(name.endswith(".bias") for name in names)
    assert "mage.encoder.layers.0.norm1.weight" not in names and "mlm_head.bias" not in names
    assert not any(name.startswith("mage.vqvae.") for name in names)  # frozen tokenizer


def test_layer_decay_groups():
    config = MageConfig(**tiny_config_kwargs(num_labels=3))
    model = MageForImageClassification(config)
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5, num_layers=config.num_hidden_layers)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert scale_of[id(params["mage.embeddings.word_embeddings.weight"])] == 0.5**3
    assert scale_of[id(params["mage.encoder.layers.1.mlp.fc1.weight"])] == 0.5**1
    assert scale_of[id(params["classifier.weight"])] == 1.0
    assert all(g["weight_decay"] == 0 for g in groups if any(p.ndim == 1 for p in g["params"]))
    with pytest.raises(ValueError, match="layer_decay"):
        param_groups_layer_decay(model, 0.05, 1.5, 2)
    assert absolute_learning_rate(1.5e-4, 4096) == pytest.approx(2.4e-3)


def test_lars_scales_updates_by_trust_ratio():
    weight = torch.nn.Parameter(torch.full((2, 2), 2.0))
    bias = torch.nn.Parameter(torch.zeros(2))
    optimizer = LARS([weight, bias], lr=1.0, momentum=0.0, trust_coefficient=0.001)
    weight.grad = torch.full((2, 2), 10.0)
    bias.grad = torch.ones(2)
    optimizer.step()
    # |w| = 4, |g| = 20 -> ratio 2e-4: update 10 * 2e-4 = 2e-3 per entry; bias: plain SGD.
    assert torch.allclose(weight, torch.full((2, 2), 2.0 - 2e-3))
    assert torch.allclose(bias, -torch.ones(2))
