"""Keras model files in: the shared files saved by real Keras give Keras' own predictions; bad files are
one clear error each. No TensorFlow here: Keras' predictions were saved beside the files."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import smallvision as sv
from smallvision.cli import main
from smallvision.errors import SmallvisionError
from smallvision.keras_files import import_keras

from conftest import shared_datasets, missing_shared_data


@pytest.fixture(scope="session")
def shared_keras():
    folder = shared_datasets().parent / "keras"
    if not (folder / "files.json").is_file():
        missing_shared_data(f"the shared Keras files are not at {folder}")
    return folder


def keras_reference(folder, name):
    files = json.loads((folder / "files.json").read_text())
    with np.load(folder / "predictions.npz") as saved:  # plain arrays: allow_pickle stays off
        images, expected = saved[f"{name}/images"], saved[f"{name}/probabilities"]
    return files[name], torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(expected)


@pytest.mark.parametrize("name", ["mnist_convnet.h5", "mnist_convnet.keras", "catsdogs_dropout.h5",
                                  "mixed_layers.keras"])
def test_an_imported_keras_file_predicts_what_keras_predicted(shared_keras, tmp_path, name):
    info, images, expected = keras_reference(shared_keras, name)
    run = import_keras(shared_keras / name, tmp_path / "run", info["classes"])
    assert run.class_names == info["classes"]
    probabilities = run.probabilities(images)
    if expected.shape[1] == 1:  # Dense(1, sigmoid): Keras gives P(second class)
        probabilities = probabilities[:, 1:]
    assert (probabilities - expected).abs().max() <= 1e-4
    reloaded = sv.load_run(run.path)  # the run is a run: it reloads from its own files
    torch.testing.assert_close(reloaded.probabilities(images[:4]), run.probabilities(images[:4]), rtol=0, atol=0)


FUNCTIONAL = Path(__file__).parent / "data" / "keras"  # benchmarks/make_keras_functional_files.py wrote them


@pytest.mark.parametrize("name", ["functional_augment.keras", "functional_augment.h5"])
def test_a_functional_model_without_branches_imports_without_its_augmentation(tmp_path, capsys, name):
    info, images, expected = keras_reference(FUNCTIONAL, name)
    assert main(["import-keras", str(FUNCTIONAL / name), "--classes", ",".join(info["classes"]),
                 "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err.strip() == ("left out: data_augmentation (RandomFlip, RandomRotation, RandomZoom): "
                                               "augmentation, which acts only in training")
    run = sv.load_run(tmp_path / "run")
    assert [type(layer).__name__ for layer in run.model.layers.values()][:2] == ["Rescaling", "Conv2D"]
    assert (run.probabilities(images) - expected).abs().max() <= 1e-4


def test_an_augmentation_layer_in_a_sequential_is_left_out(shared_keras, tmp_path):
    flipping = tmp_path / "flipping.keras"  # the shared file with a RandomFlip put in after its Rescaling
    with zipfile.ZipFile(shared_keras / "mixed_layers.keras") as source, zipfile.ZipFile(flipping, "w") as target:
        config = json.loads(source.read("config.json"))
        config["config"]["layers"].insert(2, {"class_name": "RandomFlip", "config": {"name": "flip", "mode": "horizontal"}})
        for item in source.namelist():
            target.writestr(item, json.dumps(config) if item == "config.json" else source.read(item))
    info, images, expected = keras_reference(shared_keras, "mixed_layers.keras")
    run = import_keras(flipping, tmp_path / "run", info["classes"])
    assert run.meta.imported_from.left_out == ["flip (RandomFlip)"]
    assert (run.probabilities(images) - expected).abs().max() <= 1e-4


def test_a_functional_model_with_branches_is_refused_naming_the_fork(tmp_path):
    with pytest.raises(SmallvisionError) as caught:
        import_keras(FUNCTIONAL / "functional_branches.keras", tmp_path / "run")
    assert "layer 'max_pooling2d_1' feeds both 'conv2d_3' and 'conv2d_4'" in str(caught.value)
    assert "a functional model without branches" in str(caught.value) and not (tmp_path / "run").exists()


def test_keras_names_and_the_pixel_scale_come_with_the_import(shared_keras, tmp_path, capsys):
    assert main(["import-keras", str(shared_keras / "mixed_layers.keras"), "--classes", "a,b,c",
                 "--out", str(tmp_path / "run")]) == 0
    run = sv.load_run(tmp_path / "run")
    assert run.meta.preprocessing.rescale == 1.0 and "rescaling" in run.model.layers
    assert "conv2d_3" in run.model.layers  # Keras' own layer names, for --layer
    assert main(["summary", str(tmp_path / "run")]) == 0
    assert "separable_conv2d (SeparableConv2D)" in capsys.readouterr().out


def test_bad_keras_files_are_one_clear_error_and_write_nothing(shared_keras, tmp_path):
    out = tmp_path / "run"
    cases = {}
    cases["not_a_model.h5"] = b"this is text, not HDF5"
    truncated = (shared_keras / "mnist_convnet.h5").read_bytes()
    cases["truncated.h5"] = truncated[:len(truncated) // 2]
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    archive = tmp_path / "no_config.keras"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("metadata.json", "{}")
    lambda_model = tmp_path / "lambda.keras"
    with zipfile.ZipFile(shared_keras / "mixed_layers.keras") as source, zipfile.ZipFile(lambda_model, "w") as target:
        config = json.loads(source.read("config.json"))
        config["config"]["layers"][3] = {"class_name": "Lambda", "config": {"name": "sneaky", "function": "..."}}
        for item in source.namelist():
            target.writestr(item, json.dumps(config) if item == "config.json" else source.read(item))
    misfit = tmp_path / "misfit.keras"  # the config says 17 filters where the weights hold 16
    with zipfile.ZipFile(shared_keras / "mixed_layers.keras") as source, zipfile.ZipFile(misfit, "w") as target:
        config = json.loads(source.read("config.json"))
        config["config"]["layers"][2]["config"]["filters"] = 17
        for item in source.namelist():
            target.writestr(item, json.dumps(config) if item == "config.json" else source.read(item))
    expectations = {"not_a_model.h5": "neither an HDF5 file", "truncated.h5": "damaged or incomplete",
                    "misfit.keras": "the weights do not fit the config",
                    "no_config.keras": "not a Keras archive (config.json, model.weights.h5 missing)",
                    "lambda.keras": "layer 'sneaky' (Lambda): not supported: its Python code would have to be run"}
    for name, message in expectations.items():
        with pytest.raises(SmallvisionError, match=None) as caught:
            import_keras(tmp_path / name, out)
        assert message in str(caught.value) and "\n" not in str(caught.value), name
        assert not out.exists()
    with pytest.raises(SmallvisionError, match="the network has 10 classes, but 2 class names"):
        import_keras(shared_keras / "mnist_convnet.keras", out, ["cat", "dog"])
    assert not out.exists()


def test_export_then_import_gives_the_same_predictions(tiny_source, tmp_path):
    from smallvision.keras_files import export_keras

    layers = ("Conv2D(8, 3, strides=2, padding='same', use_bias=False) BatchNormalization() Activation('relu') "
              "SeparableConv2D(8, 3, padding='same', activation='relu') DepthwiseConv2D(3, padding='same') "
              "MaxPooling2D(2) Flatten() Dropout(0.5) Dense(3, activation='softmax')")
    run = sv.train(tiny_source, "seed-mnist", out=tmp_path / "run", epochs=2, layers=layers, progress=False)
    run.precision = "fp32"
    written = export_keras(run, tmp_path / "net.keras")
    with zipfile.ZipFile(written) as archive:
        config = json.loads(archive.read("config.json"))
    assert [entry["class_name"] for entry in config["config"]["layers"]][:3] == ["InputLayer", "Rescaling", "Conv2D"]
    back = import_keras(written, tmp_path / "back", run.class_names)
    assert back.meta.preprocessing.rescale == 1.0  # the run's 1/255 now lives in the file's Rescaling
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(back.probabilities(images), run.probabilities(images), rtol=0, atol=1e-5)


def test_export_refuses_a_network_keras_does_not_have(runs_of_every_kind, tmp_path):
    from smallvision.keras_files import export_keras, keras_config
    from smallvision.models import build_network
    from smallvision.models.layer_text import parse_layers

    with pytest.raises(SmallvisionError, match="pretrained timm backbone .* is not a Keras network"):
        export_keras(runs_of_every_kind["features"], tmp_path / "x.keras")
    ours = build_network(parse_layers("Conv2D(4, 3, padding='same') Residual([Conv2D(4, 3, padding='same')]) "
                                      "Flatten() Dense(2)"), (1, 8, 8))
    with pytest.raises(SmallvisionError, match="residual \\(Residual\\) is ours, not Keras'"):
        keras_config(ours, None)
    assert not (tmp_path / "x.keras").exists()


def test_a_functional_config_that_loops_back_is_refused_not_followed_for_ever():
    from smallvision.keras_files import functional_chain

    def layer(name, parent):
        return {"class_name": "Dense", "config": {"name": name}, "inbound_nodes": [[[parent, 0, 0, {}]]]}

    body = {"layers": [layer("a", "c"), layer("b", "a"), layer("c", "b")], "input_layers": [["a", 0, 0]],
            "output_layers": [["c", 0, 0]]}
    with pytest.raises(SmallvisionError, match="do not reach the output one after another"):
        functional_chain(body, Path("looping.keras"))
