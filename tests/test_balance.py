"""Class weights: what `auto`, `balanced`, `none` and a table become, the loss they give (Keras' class_weight:
each image's loss times its class's weight, the batch's mean), the recipe field, and a run that records them;
balanced accuracy beside accuracy."""

import json

import pytest
import torch
from conftest import COLOURS, make_image_folder, write_image

from smallvision.balance import class_weights
from smallvision.errors import SmallvisionError
from smallvision.metrics import classification_metrics
from smallvision.recipe import Recipe
from smallvision.step import cross_entropy


def test_auto_balances_only_past_twice():
    names = ["cats", "dogs"]
    assert class_weights("auto", [100, 60], names).weights is None  # 1.67x: left alone
    chosen = class_weights("auto", [1000, 100], names)
    # scikit-learn's "balanced": images / (classes x the class's images)
    assert chosen.weights == pytest.approx([1100 / 2000, 1100 / 200])
    assert "cats has 1,000 training images, dogs 100" in chosen.reason
    assert chosen.table(names) == {"cats": pytest.approx(0.55), "dogs": pytest.approx(5.5)}
    assert class_weights("none", [1000, 100], names).table(names) == "none"
    assert class_weights("balanced", [100, 60], names).weights == pytest.approx([160 / 200, 160 / 120])


def test_a_table_weighs_missing_classes_one_and_names_unknown_ones():
    names = ["a", "b", "c"]
    assert class_weights({"b": 3.0}, [5, 5, 5], names).weights == [1.0, 3.0, 1.0]
    with pytest.raises(SmallvisionError, match="unknown class in optimizer.class_weight 'bb': did you mean 'b'"):
        class_weights({"bb": 3.0}, [5, 5, 5], names)


def test_the_weighted_loss_is_keras_class_weight():
    """Keras multiplies each sample's loss by its class weight and divides the sum by the batch size."""
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weights = torch.tensor([0.5, 2.0, 4.0])
    by_hand = -(weights[labels] * logits.log_softmax(1)[torch.arange(6), labels]).sum() / 6
    assert float(cross_entropy(logits, labels, False, 0.0, class_weights=weights)) == pytest.approx(float(by_hand))
    assert float(cross_entropy(logits, labels, False, 0.0, reduction="sum", class_weights=weights)) == \
        pytest.approx(float(by_hand) * 6)
    # binary, on one sigmoid unit
    logit, binary_labels = torch.randn(4, 1), torch.tensor([1, 0, 0, 1])
    p = torch.sigmoid(logit.view(-1))
    each = -(binary_labels * p.log() + (1 - binary_labels) * (1 - p).log())
    two = torch.tensor([3.0, 0.25])
    expected = float((two[binary_labels] * each).mean())
    assert float(cross_entropy(logit, binary_labels, True, 0.0, class_weights=two)) == pytest.approx(expected, rel=1e-5)
    # no weights: the plain mean, untouched
    assert float(cross_entropy(logits, labels, False, 0.0)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)))


def test_the_recipe_field():
    assert Recipe().optimizer.class_weight == "auto"
    recipe = Recipe.from_toml('[optimizer]\nclass_weight = {cats = 1, dogs = 4.5}')
    assert recipe.optimizer.class_weight == {"cats": 1.0, "dogs": 4.5}
    assert Recipe.from_toml(recipe.to_toml()) == recipe  # written and read back
    assert Recipe().replace(class_weight="balanced").get("class_weight") == "balanced"
    with pytest.raises(SmallvisionError, match="unknown class_weight 'balance': did you mean 'balanced'"):
        Recipe().replace(class_weight="balance")
    with pytest.raises(SmallvisionError, match="the weight of 'dogs' must be a number, 0 or more"):
        Recipe().replace(class_weight={"dogs": -1})
    with pytest.raises(SmallvisionError, match="must be str or a table"):
        Recipe().replace(class_weight=3)


def test_the_cli_takes_a_table_and_a_word():
    from smallvision.cli import build_parser, parse_settings

    assert parse_settings(["class_weight={cats=1,dogs=4}"]) == {"class_weight": {"cats": 1, "dogs": 4}}
    args = build_parser().parse_args(["train", "pets/", "--class-weight", "none"])
    assert args.class_weight == "none"


def test_balanced_accuracy_is_the_mean_recall():
    labels = torch.tensor([0] * 8 + [1] * 2)
    probabilities = torch.tensor([[0.9, 0.1]] * 10)  # always class 0: 80% accurate, half the classes found
    metrics = classification_metrics(labels, probabilities, ["cats", "dogs"])
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)


def test_an_imbalanced_folder_trains_balanced_and_says_so(tmp_path, capsys):
    """Ten cats to every two dogs: auto weighs the dogs five times, the first line says why, the run records
    the table and the test split's balanced accuracy and recall per class."""
    import smallvision as sv

    root = make_image_folder(tmp_path / "pets", splits=("validation", "test"), per_class=3)
    for i in range(10):
        write_image(root / "train" / "cats" / f"c{i}.png", COLOURS["cats"], seed=100 + i)
    for i in range(2):
        write_image(root / "train" / "dogs" / f"d{i}.png", COLOURS["dogs"], seed=200 + i)
    run = sv.train(root, "seed-catsdogs", out=tmp_path / "run", epochs=1, image_size=64, batch_size=4,
                   cache_dir=tmp_path / "cache", progress="lines")
    first = capsys.readouterr().out.splitlines()[0]
    assert "classes balanced (auto: cats has 10 training images, dogs 2)" in first
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert metrics["class_weight"] == {"cats": pytest.approx(0.6), "dogs": pytest.approx(3.0)}
    assert set(metrics["test_recall"]) == {"cats", "dogs"}
    assert metrics["test_balanced_accuracy"] == pytest.approx(sum(metrics["test_recall"].values()) / 2, abs=1e-6)
    assert 'class_weight = "auto"' in (run.path / "recipe.toml").read_text()  # what was asked, portable
    unweighted = sv.train(root, "seed-catsdogs", out=tmp_path / "plain", epochs=1, image_size=64, batch_size=4,
                          cache_dir=tmp_path / "cache", progress=False, class_weight="none")
    assert json.loads((unweighted.path / "metrics.json").read_text())["class_weight"] == "none"
    # the weights changed training: other weights at the end
    assert (run.path / "model.safetensors").read_bytes() != (unweighted.path / "model.safetensors").read_bytes()
