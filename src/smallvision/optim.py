"""Optimisers with Keras' update rules, stepping all weights as one flat tensor, and schedules.

A small convnet has few, small weight tensors; stepping them one by one costs more in
per-tensor overhead than in arithmetic. So the trainable weights and their gradients are
laid out as views into two flat buffers, and the optimiser updates one tensor per step.
"""

import math

import torch
from torch import nn

from smallvision.recipe import Recipe


def flatten_parameters(model: nn.Module) -> list[dict]:
    """Re-home every trainable weight (and its gradient) as a view into flat buffers: one for the
    weights that weight decay shrinks (kernels: two or more dimensions), one for those it leaves alone
    (biases, batch norm's scale and offset), as timm and nanoGPT do: decaying a bias or a scale only
    pulls the layer's output towards zero.

    Returns the optimiser's parameter groups, each holding one flat Parameter whose data and grad are
    the buffers (the second with weight_decay 0); call after the model has its final device and memory
    format. Autograd then accumulates into the views in place.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decayed, undecayed = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    groups = [{"params": [flat_buffer(decayed)]}] if decayed else []
    if undecayed:
        groups.append({"params": [flat_buffer(undecayed)], "weight_decay": 0.0})
    return groups


def flat_buffer(params: list[nn.Parameter]) -> nn.Parameter:
    """One Parameter whose data and grad hold `params`' values and gradients; each of `params` becomes
    a view into it."""
    device, dtype = params[0].device, params[0].dtype  # float32 weights (autocast computes in bf16), kept as they are
    total = sum(p.numel() for p in params)
    flat = nn.Parameter(torch.empty(total, device=device, dtype=dtype))
    flat.grad = torch.zeros(total, device=device, dtype=dtype)
    offset = 0
    for p in params:
        n = p.numel()
        # Keep each weight's own strides (channels_last included) inside its slice.
        view = torch.as_strided(flat.data, p.shape, p.stride(), offset)
        grad_view = torch.as_strided(flat.grad, p.shape, p.stride(), offset)
        view.copy_(p.data)
        p.data = view
        p.grad = grad_view
        offset += n
    return flat


def zero_gradients(groups: list[dict]) -> None:
    """Zero the flat gradient buffers in place (each weight's .grad is a view into one: never None)."""
    for group in groups:
        group["params"][0].grad.zero_()


class KerasRMSprop(torch.optim.Optimizer):
    """Keras' RMSprop: v = rho v + (1 - rho) g^2;  w -= lr g / sqrt(v + epsilon).

    PyTorch's RMSprop adds epsilon outside the square root; Keras adds it inside.
    """

    def __init__(self, params, lr=1e-3, rho=0.9, epsilon=1e-7, momentum=0.0):
        super().__init__(params, dict(lr=lr, rho=rho, epsilon=epsilon, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, rho, momentum = group["lr"], group["rho"], group["momentum"]  # lr: a float or a 0-d tensor
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["velocity"] = torch.zeros_like(p)
                    if momentum:
                        state["momentum"] = torch.zeros_like(p)
                velocity = state["velocity"]
                velocity.mul_(rho).addcmul_(p.grad, p.grad, value=1 - rho)
                increment = p.grad / velocity.add(group["epsilon"]).sqrt_()
                if momentum:
                    p.sub_(add_scaled(state["momentum"].mul_(momentum), increment, lr))
                else:
                    add_scaled(p, increment, lr, sign=-1)


def add_scaled(target: torch.Tensor, x: torch.Tensor, scale, sign: int = 1) -> torch.Tensor:
    """target += sign * scale * x in place, `scale` a float or a 0-d tensor, bit for bit alike (addcmul
    rounds as add's alpha does), so a run steps the same whichever form its learning rate takes."""
    if isinstance(scale, torch.Tensor):
        return target.addcmul_(x, scale, value=sign)
    return target.add_(x, alpha=sign * scale)


def build_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimiser over `params` (flatten_parameters' groups, or tensors); a group's own
    weight_decay (0 for biases and scales) overrides the recipe's. PyTorch's own are fused (one kernel for
    the whole update, on the CPU as on a GPU: Adam over a few million weights is 20x faster than the
    default's sequence of elementwise passes), and take the learning rate as a device tensor."""
    settings = recipe.optimizer
    lr = settings.learning_rate
    if settings.name == "rmsprop":
        return KerasRMSprop(params, lr=lr, rho=settings.rho, epsilon=settings.epsilon, momentum=settings.momentum)
    first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
    fused = first.device.type in ("cpu", "cuda") and first.dtype in (torch.float32, torch.float64, torch.bfloat16)
    if settings.name in ("adam", "adamw"):
        kind = torch.optim.AdamW if settings.name == "adamw" else torch.optim.Adam
        return kind(params, lr=lr, betas=(settings.beta_1, settings.beta_2), eps=settings.epsilon,
                    weight_decay=settings.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, nesterov=settings.momentum > 0,
                           weight_decay=settings.weight_decay, fused=fused)


def learning_rate_factor(recipe: Recipe, step: int, total_steps: int) -> float:
    """The schedule's multiplier of the base learning rate at `step` of `total_steps`."""
    progress, schedule = step / max(1, total_steps), recipe.schedule
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    # onecycle: linear warm-up from a tenth, then linear decay to zero
    if progress < schedule.warmup:
        return 0.1 + 0.9 * progress / schedule.warmup
    return max(0.0, (1 - progress) / (1 - schedule.warmup))
