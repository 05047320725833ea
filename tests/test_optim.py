"""optim.py: Keras' RMSprop rule, the learning-rate schedules and the flat weight buffers."""

import copy
import math

import pytest
import torch
from torch import nn

from smallvision.optim import (
    KerasRMSprop,
    build_optimizer,
    flatten_parameters,
    learning_rate_factor,
    zero_gradients,
)
from smallvision.recipe import Recipe

# --- KerasRMSprop ---------------------------------------------------------------------------------


def keras_rmsprop(weights, gradients, lr, rho, epsilon, momentum=0.0):
    """Keras' rule by hand, in Python floats: v = rho v + (1 - rho) g^2; increment = lr g / sqrt(v + eps);
    with momentum m = momentum m + increment and w -= m, else w -= increment. One list of gradients a step."""
    w = list(weights)
    v = [0.0] * len(w)
    m = [0.0] * len(w)
    for g in gradients:
        for i, gi in enumerate(g):
            v[i] = rho * v[i] + (1 - rho) * gi * gi
            increment = lr * gi / math.sqrt(v[i] + epsilon)
            if momentum:
                m[i] = momentum * m[i] + increment
                w[i] -= m[i]
            else:
                w[i] -= increment
    return w


def run_optimizer(optimizer_class, weights, gradients, **options):
    p = torch.tensor(weights, dtype=torch.float64, requires_grad=True)
    optimizer = optimizer_class([p], **options)
    for g in gradients:
        p.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    return p.detach()


GRADIENTS = [[0.5, -2.0, 1e-3], [0.25, 1.0, -3e-3], [-1.5, 0.5, 2e-3], [0.1, -0.2, 0.0]]


def test_keras_rmsprop_one_step_is_keras_rule():
    start = [1.0, -0.5, 2.0]
    got = run_optimizer(KerasRMSprop, start, GRADIENTS[:1], lr=0.01, rho=0.9, epsilon=1e-7)
    # by hand: v = 0.1 g^2, so w -= 0.01 g / sqrt(0.1 g^2 + 1e-7)
    expected = [w - 0.01 * g / math.sqrt(0.1 * g * g + 1e-7) for w, g in zip(start, GRADIENTS[0])]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert got[0].item() == pytest.approx(1.0 - 0.01 * 0.5 / math.sqrt(0.025 + 1e-7), rel=1e-12)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_keras_rmsprop_several_steps_follow_keras_rule(momentum):
    start = [1.0, -0.5, 2.0]
    got = run_optimizer(KerasRMSprop, start, GRADIENTS, lr=0.01, rho=0.8, epsilon=1e-6, momentum=momentum)
    expected = keras_rmsprop(start, GRADIENTS, lr=0.01, rho=0.8, epsilon=1e-6, momentum=momentum)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-15)


def test_keras_rmsprop_momentum_changes_the_path():
    start = [1.0, -0.5, 2.0]
    plain = run_optimizer(KerasRMSprop, start, GRADIENTS, lr=0.01, rho=0.9, epsilon=1e-7)
    heavy = run_optimizer(KerasRMSprop, start, GRADIENTS, lr=0.01, rho=0.9, epsilon=1e-7, momentum=0.9)
    assert not torch.allclose(plain, heavy, rtol=1e-6, atol=0)
    # the second step with momentum moves by momentum * (first increment) + the second increment
    two = run_optimizer(KerasRMSprop, start, GRADIENTS[:2], lr=0.01, rho=0.9, epsilon=1e-7, momentum=0.9)
    g1, g2 = GRADIENTS[0][1], GRADIENTS[1][1]
    v1 = 0.1 * g1 * g1
    v2 = 0.9 * v1 + 0.1 * g2 * g2
    m1 = 0.01 * g1 / math.sqrt(v1 + 1e-7)
    m2 = 0.9 * m1 + 0.01 * g2 / math.sqrt(v2 + 1e-7)
    assert two[1].item() == pytest.approx(-0.5 - m1 - m2, rel=1e-12)


def test_epsilon_inside_the_root_differs_from_torch_rmsprop_for_tiny_gradients():
    tiny = [[1e-6, -1e-6]]
    keras = run_optimizer(KerasRMSprop, [0.0, 0.0], tiny, lr=0.001, rho=0.9, epsilon=1e-7)
    torch_rms = run_optimizer(torch.optim.RMSprop, [0.0, 0.0], tiny, lr=0.001, alpha=0.9, eps=1e-7)
    # Keras: 1e-6 / sqrt(1e-13 + 1e-7) ~ 3.2e-3; torch: 1e-6 / (sqrt(1e-13) + 1e-7) ~ 2.4
    assert keras[0].item() == pytest.approx(-0.001 * 1e-6 / math.sqrt(0.1e-12 + 1e-7), rel=1e-12)
    assert torch_rms[0].item() == pytest.approx(-0.001 * 1e-6 / (math.sqrt(0.1e-12) + 1e-7), rel=1e-12)
    assert abs(torch_rms[0].item()) > 500 * abs(keras[0].item())
    assert torch.equal(keras.sign(), torch.tensor([-1.0, 1.0], dtype=torch.float64))
    # with ordinary gradients, where epsilon is negligible either way, the two rules agree
    big = [[0.5, -2.0]]
    torch.testing.assert_close(run_optimizer(KerasRMSprop, [0.0, 0.0], big, lr=0.001, rho=0.9, epsilon=1e-7),
                               run_optimizer(torch.optim.RMSprop, [0.0, 0.0], big, lr=0.001, alpha=0.9, eps=1e-7),
                               rtol=1e-5, atol=0)


def test_build_optimizer_gives_keras_rmsprop_with_the_recipe_settings():
    p = torch.zeros(2, requires_grad=True)
    optimizer = build_optimizer([p], Recipe().replace(optimizer="rmsprop", learning_rate=0.02, rho=0.8, epsilon=1e-5,
                                                      momentum=0.5))
    assert isinstance(optimizer, KerasRMSprop)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["rho"], group["epsilon"], group["momentum"]) == (0.02, 0.8, 1e-5, 0.5)


# --- schedules ------------------------------------------------------------------------------------


def factors(recipe, total=100):
    return [learning_rate_factor(recipe, step, total) for step in range(total + 1)]


def test_constant_schedule_is_one_everywhere():
    assert factors(Recipe().replace(schedule="constant")) == [1.0] * 101


def test_cosine_schedule_runs_from_one_to_zero_through_a_half():
    values = factors(Recipe().replace(schedule="cosine"))
    assert values[0] == 1.0
    assert values[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), abs=1e-12)
    assert values[50] == pytest.approx(0.5, abs=1e-12)
    assert values[100] == pytest.approx(0.0, abs=1e-12)
    assert all(later < earlier for earlier, later in zip(values, values[1:]))  # strictly falling


def test_onecycle_warms_up_from_a_tenth_then_falls_linearly_to_zero():
    values = factors(Recipe().replace(schedule="onecycle", warmup=0.2))
    assert values[0] == pytest.approx(0.1, abs=1e-12)
    assert values[10] == pytest.approx(0.55, abs=1e-12)  # half-way through the warm-up
    assert values[20] == pytest.approx(1.0, abs=1e-12)  # the warm-up's end: the full rate
    assert values[60] == pytest.approx(0.5, abs=1e-12)  # half-way through the decay
    assert values[100] == pytest.approx(0.0, abs=1e-12)
    assert all(later > earlier for earlier, later in zip(values[:21], values[1:21]))  # rising in the warm-up
    assert all(later < earlier for earlier, later in zip(values[20:], values[21:]))  # falling after it
    assert max(values) == values[20]


def test_onecycle_without_warmup_starts_at_the_full_rate():
    values = factors(Recipe().replace(schedule="onecycle", warmup=0.0))
    assert values[0] == 1.0 and values[50] == pytest.approx(0.5) and values[100] == 0.0


# --- flat parameter buffers -----------------------------------------------------------------------


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.dense = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.dense(torch.relu(self.bn(self.conv(x))).flatten(1))


def small_model(channels_last=True):
    torch.manual_seed(0)
    model = Small()
    with torch.no_grad():  # batch norm's scale and offset away from 1 and 0, so changes show
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def inputs():
    return torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(1)).to(memory_format=torch.channels_last)


def shares_storage(tensor, buffer):
    return tensor.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


def test_flatten_parameters_splits_kernels_from_biases_and_scales():
    model = small_model()
    kernels = [model.conv.weight, model.dense.weight]
    others = [model.conv.bias, model.bn.weight, model.bn.bias, model.dense.bias]
    values = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = flatten_parameters(model)
    assert len(groups) == 2 and all(len(g["params"]) == 1 for g in groups)
    decayed, undecayed = groups[0]["params"][0], groups[1]["params"][0]
    assert "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0
    assert isinstance(decayed, nn.Parameter) and decayed.ndim == 1 and decayed.numel() == 3 * 4 * 9 + 64 * 2
    assert undecayed.ndim == 1 and undecayed.numel() == 4 + 4 + 4 + 2
    assert all(shares_storage(p, decayed) and shares_storage(p.grad, decayed.grad) for p in kernels)
    assert all(shares_storage(p, undecayed) and shares_storage(p.grad, undecayed.grad) for p in others)
    for name, p in model.named_parameters():  # the values survive the move
        assert torch.equal(p, values[name]), name
    # together the views cover each buffer exactly once
    assert sorted(torch.cat([p.detach().flatten() for p in kernels]).tolist()) == sorted(decayed.detach().tolist())
    assert sorted(torch.cat([p.detach().flatten() for p in others]).tolist()) == sorted(undecayed.detach().tolist())


def test_parameters_are_views_into_their_buffer():
    model = small_model()
    decayed, undecayed = (g["params"][0] for g in flatten_parameters(model))
    with torch.no_grad():
        decayed.fill_(0.25)
        undecayed.fill_(-3.0)
    assert (model.conv.weight == 0.25).all() and (model.dense.weight == 0.25).all()
    assert (model.conv.bias == -3.0).all() and (model.bn.weight == -3.0).all() and (model.bn.bias == -3.0).all()
    with torch.no_grad():  # and the other way: a weight written in place is written into the buffer
        model.dense.bias.copy_(torch.tensor([7.0, 8.0]))
    assert (undecayed == 7.0).sum() == 1 and (undecayed == 8.0).sum() == 1


def test_channels_last_strides_are_kept():
    model = small_model(channels_last=True)
    before = model.conv.weight.stride()
    assert before != model.conv.weight.contiguous().stride()  # the case is not trivial
    flatten_parameters(model)
    assert model.conv.weight.stride() == before
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv.weight.grad.stride() == before


def test_gradients_land_in_the_flat_buffer_and_zero_in_place():
    model = small_model()
    reference = copy.deepcopy(model)
    groups = flatten_parameters(model)
    decayed, undecayed = groups[0]["params"][0], groups[1]["params"][0]
    assert (decayed.grad == 0).all() and (undecayed.grad == 0).all()
    x = inputs()
    model(x).square().sum().backward()
    reference(x).square().sum().backward()
    expected = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name].grad, rtol=1e-5, atol=1e-6)
        assert shares_storage(p.grad, decayed.grad if p.ndim >= 2 else undecayed.grad), name
    total = sum(float(p.grad.abs().sum()) for p in model.parameters())
    assert total > 0
    assert float(decayed.grad.abs().sum() + undecayed.grad.abs().sum()) == pytest.approx(total, rel=1e-6)

    views = {name: p.grad for name, p in model.named_parameters()}
    model(x).square().sum().backward()  # without zeroing, autograd accumulates into the same views
    for name, p in model.named_parameters():
        assert p.grad is views[name]
        torch.testing.assert_close(p.grad, 2 * expected[name].grad, rtol=1e-5, atol=1e-6)

    zero_gradients(groups)
    assert (decayed.grad == 0).all() and (undecayed.grad == 0).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad is views[name] and (p.grad == 0).all(), name
    model(x).square().sum().backward()  # once again from zero: the first gradients, not three times them
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name].grad, rtol=1e-5, atol=1e-6)


def test_an_optimiser_step_on_the_buffers_moves_the_model():
    model = small_model()
    reference = copy.deepcopy(model)
    groups = flatten_parameters(model)
    optimizer = build_optimizer(groups, Recipe().replace(optimizer="rmsprop", learning_rate=0.01))
    reference_optimizer = KerasRMSprop(reference.parameters(), lr=0.01)
    x = inputs()
    for _ in range(3):
        zero_gradients(groups)
        model(x).square().sum().backward()
        optimizer.step()
        reference_optimizer.zero_grad()
        reference(x).square().sum().backward()
        reference_optimizer.step()
    expected = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, expected[name], rtol=1e-5, atol=1e-6)
        assert not torch.equal(p, small_model().get_parameter(name)), name  # it did move


def test_adamw_weight_decay_shrinks_kernels_only():
    model = small_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    groups = flatten_parameters(model)
    optimizer = build_optimizer(groups, Recipe().replace(optimizer="adamw", learning_rate=0.1, weight_decay=0.5))
    assert isinstance(optimizer, torch.optim.AdamW)
    zero_gradients(groups)
    optimizer.step()  # a zero gradient: Adam's own update is zero, only the decay acts
    for name in ("conv.weight", "dense.weight"):
        torch.testing.assert_close(model.get_parameter(name), before[name] * (1 - 0.1 * 0.5), rtol=1e-6, atol=0)
        assert not torch.equal(model.get_parameter(name), before[name])
    for name in ("conv.bias", "bn.weight", "bn.bias", "dense.bias"):
        assert torch.equal(model.get_parameter(name), before[name]), name


def test_frozen_parameters_stay_out_of_the_buffers():
    model = small_model()
    model.conv.requires_grad_(False)
    kernel = model.conv.weight
    groups = flatten_parameters(model)
    assert groups[0]["params"][0].numel() == 64 * 2 and groups[1]["params"][0].numel() == 4 + 4 + 2
    assert not shares_storage(model.conv.weight, groups[0]["params"][0]) and model.conv.weight is kernel


def test_a_model_with_only_biases_gets_one_undecayed_group():
    torch.manual_seed(0)
    model = nn.BatchNorm1d(3)
    groups = flatten_parameters(model)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    flat = groups[0]["params"][0]
    assert flat.numel() == 6 and shares_storage(model.weight, flat) and shares_storage(model.bias, flat)
    optimizer = build_optimizer(groups, Recipe().replace(optimizer="adamw", learning_rate=0.1, weight_decay=0.5))
    zero_gradients(groups)
    optimizer.step()  # a zero gradient and no decay for this group: nothing moves
    assert torch.equal(model.weight, torch.ones(3)) and torch.equal(model.bias, torch.zeros(3))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    (model(x) * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
    assert shares_storage(model.bias.grad, flat.grad)
    torch.testing.assert_close(model.bias.grad, torch.tensor([4.0, -8.0, 12.0]))  # d/d offset: the sum of weights
    torch.testing.assert_close(model.weight.grad, torch.zeros(3), rtol=0, atol=1e-5)  # normalised x sums to 0
    rmsprop = KerasRMSprop([flat], lr=0.1)
    rmsprop.step()  # Keras' first step: lr g / sqrt(0.1 g^2 + eps), about lr sqrt(10) sign(g)
    expected = [-0.1 * g / math.sqrt(0.1 * g * g + 1e-7) for g in (4.0, -8.0, 12.0)]
    torch.testing.assert_close(model.bias, torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_keras_rmsprop_steps_alike_with_the_learning_rate_a_float_or_a_tensor(momentum):
    """The training step gives the rate as a device tensor (filled each step, never baked into a compiled
    step); the rule must not change with it."""
    steps = []
    for lr in (0.01, torch.tensor(0.01)):
        p = torch.nn.Parameter(torch.linspace(-1, 1, 50))
        optimizer = KerasRMSprop([p], lr=lr, momentum=momentum)
        for i in range(5):
            p.grad = torch.sin(torch.arange(50.0) * (i + 1))
            optimizer.step()
        steps.append(p.detach().clone())
    assert torch.equal(steps[0], steps[1])  # bit for bit: a run's steps do not depend on it
    assert not torch.allclose(steps[0], torch.linspace(-1, 1, 50), atol=1e-3)  # it did step


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_pytorchs_optimisers_are_fused_and_take_a_tensor_learning_rate(name):
    p = torch.nn.Parameter(torch.ones(10))
    optimizer = build_optimizer([p], Recipe().replace(optimizer=name, learning_rate=0.1, momentum=0.9))
    assert optimizer.param_groups[0]["fused"] is True
    optimizer.param_groups[0]["lr"] = torch.tensor(0.1)
    p.grad = torch.ones(10)
    optimizer.step()
    assert float(p.detach().max()) < 1.0
