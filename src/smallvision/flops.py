"""How much arithmetic a training step is, and how much this machine can do: FLOPs counted by PyTorch's
own counter (`torch.utils.flop_counter`: matrix products and convolutions, forward and backward, a
multiply-add counted as two), and the peak measured as the best of a few large matrix products. Their
ratio is how close training runs to the hardware (`benchmarks/utilization.py`)."""

import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                               output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """A convolution's backward pass: each of the input's and the weights' gradients, where asked for,
    costs what the forward pass did. PyTorch's own formula (2.14) leaves `groups` out of the backward,
    which counts a depthwise 3x3 convolution's gradients 32x (64 channels) too many: EfficientNet's
    training step came out at 13 GFLOP an image instead of about 2."""
    if transposed:  # not used by any network here; the forward's arithmetic runs the other way
        grad_out_shape, x_shape = x_shape, grad_out_shape
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])  # w: [out, in / groups, kh, kw]
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


COUNTED = {aten.convolution_backward: convolution_backward_flops}


def training_flops(model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int = 2) -> float:
    """FLOPs per image of one training step's forward and backward (the update's elementwise work is not
    counted: it is memory-bound, and tiny beside the convolutions). Weights that do not train (a frozen
    backbone's) get no gradient and are not counted in the backward pass; the input never needs one."""
    images = torch.zeros(batch, *input_shape)
    was_training = model.training
    model.train()
    try:
        with FlopCounterMode(display=False, custom_mapping=COUNTED) as counter:
            logits = model(images)
            if logits.requires_grad:
                logits.float().sum().backward()
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def forward_flops(model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int = 2) -> float:
    """FLOPs per image of one forward pass (inference)."""
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=COUNTED) as counter:
        model(torch.zeros(batch, *input_shape, device=device))
    return counter.get_total_flops() / batch


def matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 1.0,
                device: torch.device | str = "cpu") -> float:
    """GFLOP/s of the best of several size x size matrix products in `dtype` on every thread: about what
    the machine's vector units and memory can give a convolution at best."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    torch.mm(a, b)  # the first call builds the kernel
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9
