"""LARS (layer-wise adaptive rate scaling), the linear-probe optimizer of MAE/MAGE.

For parameters with more than one dimension the update (gradient + weight decay) is rescaled by
`trust_coefficient * |w| / |update|`; 1-D parameters (biases, norms) get plain momentum SGD without decay.
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio.

    Args:
        params: parameters or groups.
        lr: learning rate.
        weight_decay: L2 added to the gradient of multi-dimensional parameters.
        momentum: heavy-ball momentum (the buffer accumulates the scaled update).
        trust_coefficient: the trust ratio's coefficient (0.001 in MAE/MAGE).
    """

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        if lr < 0:
            raise ValueError(f"`lr` must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                update = parameter.grad
                if parameter.ndim > 1:
                    update = update.add(parameter, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(parameter), torch.norm(update)
                    ratio = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["trust_coefficient"] * param_norm / update_norm.clamp_min(1e-12),
                        torch.ones_like(param_norm),
                    )
                    update = update.mul(ratio)
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update)
                parameter.add_(buffer, alpha=-group["lr"])
        return loss
