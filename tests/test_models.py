import torch

from smallvision.models import count_parameters, create_model, summary
from smallvision.models.summary import layer_table


def test_mnist_convnet_matches_the_seeds_summary():
    rows = layer_table(create_model("mnist_convnet"))
    assert [shape for _, shape, _ in rows] == [
        (None, 26, 26, 32), (None, 13, 13, 32), (None, 11, 11, 64), (None, 5, 5, 64),
        (None, 3, 3, 64), (None, 576), (None, 64), (None, 10)]
    assert [params for _, _, params in rows] == [320, 0, 18_496, 0, 36_928, 0, 36_928, 650]
    assert [name for name, _, _ in rows][:3] == ["conv2d (Conv2D)", "max_pooling2d (MaxPooling2D)", "conv2d_1 (Conv2D)"]
    assert count_parameters(create_model("mnist_convnet")) == 93_322
    text = summary(create_model("mnist_convnet"))
    assert "Total params: 93,322" in text and "(None, 3, 3, 64)" in text


def test_fused_forward_equals_layer_by_layer():
    model = create_model("mnist_convnet").eval()
    x = torch.rand(4, 1, 28, 28)
    stepwise = list(model.layer_outputs(x).values())[-1]
    torch.testing.assert_close(model(x), stepwise)


def test_weights_start_as_keras_does():
    model = create_model("mnist_convnet")
    conv = model.layers["conv2d"].conv
    assert torch.count_nonzero(conv.bias) == 0
    limit = (6 / (9 * 1 + 9 * 32)) ** 0.5  # glorot uniform for a 3x3, 1 -> 32 kernel
    assert conv.weight.abs().max() <= limit and conv.weight.abs().max() > 0.8 * limit
