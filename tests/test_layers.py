"""Networks as layer lists in Keras' words: the written form, shapes, the named networks, runs and bad input."""

import json

import pytest
import torch
import torch.nn.functional as F

import smallvision as sv
from smallvision.cli import main
from smallvision.errors import SmallvisionError
from smallvision.models import build_network, count_parameters, create_model, model_names, named_layers
from smallvision.models.layer_text import layers_from_json, layers_source, layers_to_json, parse_layers
from smallvision.models.layers import Conv2D, same_padding
from smallvision.models.summary import layer_table

SEED_MNIST = """
Conv2D(32, (3, 3), activation='relu')    # the seed's MNIST convnet, as the book writes it
MaxPooling2D((2, 2))
Conv2D(64, (3, 3), activation='relu')
MaxPooling2D((2, 2))
Conv2D(64, (3, 3), activation='relu')
Flatten()
Dense(64, activation='relu')
Dense(10, activation='softmax')
"""
# The book's second cats-vs-dogs network, pasted from its Keras code.
SEED_CATSDOGS = """
model.add(layers.Conv2D(32, (3, 3), activation='relu', input_shape=(150, 150, 3)))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3, 3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(128, (3, 3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(128, (3, 3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Flatten())
model.add(layers.Dropout(0.5))
model.add(layers.Dense(512, activation='relu'))
model.add(layers.Dense(1, activation='sigmoid'))
"""
EVERY_WORD = ("Input(shape=(32, 32, 3)) Rescaling(1./255, offset=-0.5) ZeroPadding2D(((1, 0), (0, 1))) "
              "Conv2D(8, 3, strides=2, padding='same', use_bias=False) BatchNormalization(momentum=0.9, center=False) "
              "ReLU(max_value=6.0) SeparableConv2D(16, (3, 3), padding='same', depth_multiplier=2, activation='gelu') "
              "DepthwiseConv2D(3, dilation_rate=2, padding='same', activation='swish') LeakyReLU(alpha=0.1) "
              "AveragePooling2D(3, strides=2, padding='same') SpatialDropout2D(0.1) "
              "Residual([Conv2D(16, 1, activation='elu'), Activation('tanh')]) MaxPooling2D(2, padding='same') "
              "Conv2D(16, 3, activation='selu') GlobalMaxPooling2D() Dropout(0.2) Dense(8, activation='leaky_relu') "
              "Dense(3) Softmax()")


def test_the_written_form_round_trips_through_text_and_json():
    layers = parse_layers(EVERY_WORD)
    text = layers_source(layers)
    assert text[0] == "Input(shape=(32, 32, 3))" and text[-1] == "Softmax()"
    again = parse_layers(text)
    assert layers_to_json(again) == layers_to_json(layers) and layers_source(again) == text
    from_json = layers_from_json(json.loads(json.dumps(layers_to_json(layers))))
    assert layers_source(from_json) == text


def test_every_word_builds_and_runs_with_keras_shapes():
    torch.manual_seed(0)
    model = build_network(parse_layers(EVERY_WORD), None, num_classes=3).eval()
    rows = {name.split(" ")[0]: shape for name, shape, _ in layer_table(model)}
    assert rows["zero_padding2d"] == (None, 33, 33, 3)
    assert rows["conv2d"] == (None, 17, 17, 8)  # 'same' with a stride of 2: ceil(33 / 2)
    assert rows["average_pooling2d"] == (None, 9, 9, 16) and rows["max_pooling2d"] == (None, 5, 5, 16)
    assert rows["dense_1"] == (None, 3) and model.output_activation == "softmax"
    probabilities = model.predict_proba(model(torch.rand(2, 3, 32, 32) * 255))
    assert probabilities.shape == (2, 3) and torch.allclose(probabilities.sum(1), torch.ones(2))
    assert count_parameters(model.layers["batch_normalization"]) == 3 * 8  # no beta: scale and the two statistics


def test_same_padding_puts_the_odd_pixel_after_as_keras_does():
    assert same_padding(112, 3, 2) == (0, 1) and same_padding(7, 3, 2) == (1, 1) and same_padding(5, 2, 1) == (0, 1)
    assert same_padding(10, 3, 1, dilation=2) == (2, 2)
    conv = Conv2D(4, 3, strides=2, padding="same")
    conv.build_named("conv2d", (2, 8, 8))
    x = torch.rand(1, 2, 8, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.conv.weight, conv.conv.bias, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", model_names())
def test_each_named_network_equals_its_written_form(name):
    torch.manual_seed(0)
    named = create_model(name).eval()
    written = layers_source(named_layers(name))
    torch.manual_seed(0)
    rebuilt = build_network(parse_layers(written), named.input_shape, name=name).eval()
    assert count_parameters(rebuilt) == count_parameters(named)
    for key, value in named.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key]), key
    x = torch.rand(2, *named.input_shape)
    torch.testing.assert_close(rebuilt(x), named(x), rtol=0, atol=0)


def test_the_seeds_networks_written_as_layers_print_the_seeds_summary(capsys):
    assert main(["summary", "--layers", SEED_MNIST]) == 0
    text = capsys.readouterr().out
    assert "(None, 3, 3, 64)" in text and "Total params: 93,322" in text
    assert main(["summary", "--layers", SEED_CATSDOGS]) == 0
    text = capsys.readouterr().out
    assert "(None, 7, 7, 128)" in text and "dropout (Dropout)" in text and "Total params: 3,453,121" in text


@pytest.mark.parametrize("text, message", [
    ("Conv2d(32, 3)", "unknown layer 'Conv2d': did you mean 'Conv2D'"),
    ("Conv2D(32, 3, activaton='relu')", "unknown Conv2D argument 'activaton': did you mean 'activation'"),
    ("Conv2D('32', 3)", "Conv2D: filters must be a whole number of at least 1, got '32'"),
    ("Conv2D(32, 3, padding='full')", "padding must be 'valid' or 'same'"),
    ("Dense(10, activation='relux')", "did you mean 'relu'"),
    ("Conv2D(32, 3, activation=__import__('os').system('true'))", "must be a literal"),
    ("Conv2D(32, (3, 3)", "check the brackets"),
    ("Dense()", "Dense needs units"),
    ("Input(shape=(9, 9, 1)) Conv2D(4, 3) MaxPooling2D(2) Conv2D(4, 3) MaxPooling2D(2)",
     "max_pooling2d_1 (MaxPooling2D) receives a 1x1x4 map and would leave 0x0x4: the maps shrink to nothing"),
    ("Input(shape=(8, 8, 1)) Conv2D(4, 3) Dense(3)", "dense (Dense) receives a 6x6x4 map; put Flatten()"),
    ("Input(shape=(8, 8, 1)) Flatten() Dense(10, activation='softmax')", "ends in 10 units but the data has 3 classes"),
])
def test_bad_layers_are_one_clear_error(text, message):
    with pytest.raises(SmallvisionError) as caught:
        build_network(parse_layers(text), None, num_classes=3)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bad_layers_on_the_command_line_exit_2_and_write_nothing(tiny_source, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_source), "--layers", "Flatten() Dense(10, activation='softmax')",
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 2
    assert "ends in 10 units but the data has 3 classes: end it in Dense(3" in capsys.readouterr().err
    assert not out.exists()
    assert main(["train", str(tiny_source), "--layers", "Flaten()", "--out", str(out)]) == 2
    assert "did you mean 'Flatten'" in capsys.readouterr().err and not out.exists()


def test_a_layer_list_trains_and_its_run_reloads_from_model_json_alone(tiny_source, tmp_path):
    layers_file = tmp_path / "net.txt"
    layers_file.write_text("Rescaling(1./255)\nConv2D(8, 3, padding='same', activation='relu')\nMaxPooling2D(2)\n"
                           "BatchNormalization()\nGlobalAveragePooling2D()\nDense(3, activation='softmax')\n")
    out = tmp_path / "run"
    assert main(["train", str(tiny_source), "--layers", str(layers_file), "--epochs", "2", "--out", str(out),
                 "--quiet"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"]["model"] == "custom"
    assert [entry["class_name"] for entry in meta["architecture"]["layers"]][:2] == ["Rescaling", "Conv2D"]
    assert meta["preprocessing"]["rescale"] == 1.0  # the network scales the pixels itself
    recipe = sv.load_recipe(str(out / "recipe.toml"))
    assert recipe.network.layers[1] == "Conv2D(8, (3, 3), padding='same', activation='relu')"
    assert recipe.preprocess.rescale == 1.0
    run = sv.load_run(out)
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    assert run.probabilities(images).shape == (5, 3)


def test_sequential_in_python_trains_and_a_named_run_without_layers_still_reloads(tiny_source, tmp_path):
    network = sv.Sequential([sv.layers.Conv2D(8, (3, 3), activation="relu"), sv.layers.MaxPooling2D((2, 2)),
                             sv.layers.Flatten(), sv.layers.Dense(3, activation="softmax")])
    run = sv.train(tiny_source, "seed-mnist", model=network, out=tmp_path / "python", epochs=1, progress=False)
    assert run.model.model_name == "custom" and len(run.recipe.network.layers) == 4
    # A run written before layer lists names its network and nothing more: it still reloads, identically.
    named = sv.train(tiny_source, "seed-mnist", out=tmp_path / "named", epochs=1, progress=False)
    meta = json.loads((named.path / "model.json").read_text())
    del meta["architecture"]["layers"]
    (named.path / "model.json").write_text(json.dumps(meta))
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(sv.load_run(named.path).probabilities(images), named.probabilities(images),
                               rtol=0, atol=0)


def test_the_summary_help_lists_the_whole_vocabulary():
    from smallvision.cli import ACTIVATION_WORDS, LAYER_WORDS
    from smallvision.models.layers import ACTIVATIONS, VOCABULARY

    assert LAYER_WORDS.split() == list(VOCABULARY)
    assert ACTIVATION_WORDS.split() == [name for name in ACTIVATIONS if name]
