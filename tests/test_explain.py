import json
import os

import torch

from smallvision.activations import layer_activations
from smallvision.cli import main
from smallvision.data.shapes import peak_inside_box, read_boxes
from smallvision.explain import grad_cam, run_heatmaps
from smallvision.filters import filter_patterns
from smallvision.models import create_model
from smallvision.taps import default_cam_layer, map_geometry, map_shapes


def test_grad_cam_points_at_the_shape_that_decides_the_class(shapes_run, shapes_folder):
    """The issue's figure: the heatmap's peak inside the 12x12 shape for at least 90% of 500 test shape
    images (a uniform guess would manage about 144 / 4096, 4%)."""
    assert shapes_run.metrics["test_accuracy"] > 0.9
    test = shapes_run.labelled_split(split="test", cache_dir=shapes_run.path.parent / "no-cache")
    boxes = read_boxes(shapes_folder)
    shapes = [index for index, path in enumerate(test.paths) if path in boxes]
    assert len(test) == 750 and len(shapes) == 500
    heatmaps, classes, layer = run_heatmaps(shapes_run, test.images[shapes])
    assert layer == "conv2d_2" and heatmaps.shape == (500, 64, 64)
    peaks = heatmaps.amax(dim=(1, 2))  # 1 at a cell's centre, which may fall between pixels
    assert heatmaps.min() >= 0 and (peaks <= 1).all() and (peaks > 0.9).all()
    hits = peak_inside_box(heatmaps, [boxes[test.paths[index]] for index in shapes])
    assert sum(hits) / len(hits) >= 0.9


def test_grad_cam_is_at_the_layer_resolution_and_placed_by_its_geometry():
    model = create_model("mnist_convnet").eval()
    heatmaps = grad_cam(model, torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3]), "conv2d_1")
    assert heatmaps.shape == (3, 11, 11)
    assert default_cam_layer(model) == "conv2d_2"  # the seed's last convolution: 3x3, coarse
    assert map_geometry(model, "conv2d_2") == (8.5, 4.0)  # 'valid' convolutions pull the map inwards
    assert map_geometry(create_model("small_convnet"), "conv2d_2") == (1.5, 4.0)
    assert default_cam_layer(create_model("catsdogs_convnet")) == "conv2d_3"
    assert default_cam_layer(create_model("small_resnet")) == "residual_2"


def test_explain_writes_a_picture_per_image_for_every_kind_of_run(runs_of_every_kind, shapes_folder, tmp_path, capsys):
    image = shapes_folder / "test" / "red_square" / "00001.png"
    default_layers = {  # each network's last layer with a map (default_cam_layer)
        "sigmoid": "conv2d_3",  # the seed's cats-vs-dogs network: its fourth convolution
        "small_convnet": "conv2d_2",
        "features": "bn2",  # EfficientNet's last convolution block, frozen or fine-tuned
        "finetune": "bn2",
    }
    explained = []
    for kind, run in runs_of_every_kind.items():
        if kind == "mnist":
            continue
        out = tmp_path / kind
        assert main(["explain", str(run.path), str(image), str(image), "--class", run.class_names[0], "-o", str(out)]) == 0
        results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(results) == 2, kind
        assert [r["explained"] for r in results] == [run.class_names[0]] * 2, kind
        assert [r["layer"] for r in results] == [default_layers[kind]] * 2, kind
        assert results[0]["picture"] != results[1]["picture"], kind  # two inputs of one name do not overwrite
        assert sorted(os.path.basename(r["picture"]) for r in results) == ["00001-gradcam-2.png", "00001-gradcam.png"]
        for name in ("00001-gradcam.png", "00001-gradcam-2.png"):
            assert (out / name).stat().st_size > 5000, (kind, name)
        explained.append(kind)
    assert explained == list(default_layers)  # every kind but the one-channel MNIST run was explained


def test_a_wrong_layer_or_class_gets_a_clear_error(shapes_run, shapes_folder, capsys):
    image = str(shapes_folder / "test" / "red_square" / "00001.png")
    assert main(["explain", str(shapes_run.path), image, "--layer", "conv9"]) == 2
    assert "layers with maps are: conv2d (64x64x32)" in capsys.readouterr().err
    assert main(["explain", str(shapes_run.path), image, "--class", "red_squares"]) == 2
    assert "did you mean 'red_square'" in capsys.readouterr().err
    assert main(["explain", str(shapes_run.path), image + ".missing"]) == 2
    assert ".missing" in capsys.readouterr().err
    assert main(["filters", str(shapes_run.path), "--layer", "conv2d", "--count", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["compare", str(shapes_run.path), str(shapes_run.path.parent)]) == 2
    assert "not a smallvision run" in capsys.readouterr().err


def test_activations_have_the_layers_shapes(shapes_run, shapes_folder, tmp_path, capsys):
    image = shapes_folder / "test" / "blue_disk" / "00000.png"
    _, images = shapes_run.load_images([image])
    activations = layer_activations(shapes_run, images[0])
    shapes = map_shapes(shapes_run.model)
    assert list(activations) == list(shapes) == ["conv2d", "max_pooling2d", "conv2d_1", "max_pooling2d_1", "conv2d_2"]
    assert all(tuple(activations[name].shape) == shape for name, shape in shapes.items())
    assert main(["activations", str(shapes_run.path), str(image), "--layers", "conv2d", "conv2d_2", "-o", str(tmp_path)]) == 0
    pictures = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in pictures] == ["00000-00-conv2d.png", "00000-01-conv2d_2.png"]


def test_filter_visualisation_increases_its_objective(shapes_run, tmp_path, capsys):
    patterns, before, after = filter_patterns(shapes_run, "conv2d_1", count=8, steps=10)
    assert patterns.shape == (8, 3, 64, 64)
    assert (after > before).all()
    assert main(["filters", str(shapes_run.path), "--layer", "conv2d", "--count", "4", "--steps", "3",
                 "-o", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 5000


def test_activations_and_filters_reach_inside_a_backbone(runs_of_every_kind, shapes_folder):
    run = runs_of_every_kind["features"]
    _, images = run.load_images([shapes_folder / "test" / "blue_disk" / "00000.png"])
    activations = layer_activations(run, images[0], ["blocks.1", "conv_head"])
    assert activations["blocks.1"].shape == (24, 16, 16) and activations["conv_head"].shape == (1280, 2, 2)
    _, before, after = filter_patterns(run, "blocks.2", count=2, steps=3)
    assert (after > before).all()
