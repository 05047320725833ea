"""Pretrained backbones: the offline EfficientNet-Lite0 weights, clear errors, and feature extraction."""

import os

import pytest
import torch
from test_catsdogs import shared_slice

import smallvision as sv
from smallvision.errors import SmallvisionError
from smallvision.models import backbones
from smallvision.models.backbones import (
    BackboneClassifier,
    backbone_preprocessing,
    create_backbone,
    load_offline_weights,
)
from smallvision.models.summary import count_parameters


@pytest.mark.parametrize("name", ["efficientnet_lite0", *(pytest.param(name, marks=pytest.mark.slow)  # 8 s each
                                                         for name in ("efficientnet_lite1", "efficientnet_lite2"))])
def test_the_offline_weights_fit_timm_and_know_cats_from_dogs(shared_catsdogs, tmp_path, name):
    import timm

    classifier = timm.create_model(name, pretrained=False)  # with ImageNet's 1,000 classes
    before = classifier.conv_stem.weight.clone()
    load_offline_weights(classifier, name)
    assert not torch.equal(before, classifier.conv_stem.weight)
    config = backbone_preprocessing(name)
    source = sv.open_source(shared_slice(shared_catsdogs, tmp_path / "slice", 2, 40), image_shape=config["input_size"],
                            cache_dir=tmp_path / "cache")
    mean, std = torch.tensor(config["mean"]).view(1, 3, 1, 1), torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        predicted = classifier.eval()((source.test.images.float() / 255 - mean) / std).argmax(1)
    cats, dogs = predicted[source.test.labels == 0], predicted[source.test.labels == 1]
    assert ((cats >= 281) & (cats <= 285)).float().mean() > 0.55  # ImageNet's domestic cats
    assert ((dogs >= 151) & (dogs <= 268)).float().mean() > 0.75  # ImageNet's dogs


def test_mismatched_offline_weights_fail_loudly():
    import timm

    grey = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0, in_chans=1)
    with pytest.raises(SmallvisionError, match=r"do not fit timm's network: _conv_stem.weight is \(32, 3, 3, 3\)"):
        load_offline_weights(grey, "efficientnet_lite0")
    bigger = timm.create_model("efficientnet_lite1", pretrained=False, num_classes=0)
    with pytest.raises(SmallvisionError, match="they do not correspond"):
        load_offline_weights(bigger, "efficientnet_lite0")


def test_unknown_and_unavailable_backbones_get_clear_errors(monkeypatch):
    with pytest.raises(SmallvisionError, match=r"did you mean 'efficientnet_lite\d'.*known: [\d,]+ names$"):
        create_backbone("efficientnet_litte0")

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no network")
        return original(*args, pretrained=False, **kwargs)

    import timm

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(SmallvisionError, match="offline, these work: efficientnet_lite0"):
        create_backbone("resnet18")


@pytest.mark.slow  # 15 epochs on 220 shared photos at 160x160: 11 s on a 2-core AVX2 CPU
def test_feature_extraction_learns_and_leaves_the_backbone_unchanged(shared_catsdogs, tmp_path, monkeypatch):
    root = shared_slice(shared_catsdogs, tmp_path / "slice", 60, 50)
    frozen = {}
    original = backbones.BackboneClassifier.freeze_backbone

    def remember(model):
        original(model)
        frozen.update({k: v.clone() for k, v in model.backbone.state_dict().items()})
        frozen["model"] = model

    monkeypatch.setattr(backbones.BackboneClassifier, "freeze_backbone", remember)
    run = sv.train(root, "catsdogs-features", out=tmp_path / "run", progress=False, cache_dir=tmp_path / "cache",
                   image_size=160, epochs=15)
    assert run.metrics["test_accuracy"] > 0.9
    trained = frozen.pop("model")
    after = trained.backbone.state_dict()
    assert after.keys() == frozen.keys()  # every weight and statistic compared, none missed
    assert all(torch.equal(after[k].cpu(), v.cpu()) for k, v in frozen.items())  # weights and BN statistics
    assert run.meta.preprocessing.mean == pytest.approx([127 / 255] * 3)
    reloaded = sv.load_run(run.path)
    assert isinstance(reloaded.model, BackboneClassifier)
    assert reloaded.evaluate(root)["accuracy"] == pytest.approx(run.metrics["test_accuracy"], abs=0.02)
    results = reloaded.predict([root / "test"])  # the photos as files, each labelled by its folder
    assert len(results) == 100
    truth = [os.path.basename(os.path.dirname(r["path"])) for r in results]
    assert truth.count("cats") == truth.count("dogs") == 50
    hits = [r["label"] == label for r, label in zip(results, truth)]
    assert sum(hits) / len(hits) > 0.9
    assert sum(hits) / len(hits) == pytest.approx(run.metrics["test_accuracy"], abs=0.02)


def test_a_frozen_backbone_counts_as_frozen():
    model = BackboneClassifier("efficientnet_lite0", (3, 224, 224), 2, pretrained=False)
    model.freeze_backbone()
    assert count_parameters(model, trainable=True) == 1280 * 2 + 2
    model.train()
    assert not model.backbone.training and model.head.training


def test_fine_tuning_trains_only_what_each_stage_unfreezes(shared_catsdogs, tmp_path, monkeypatch):
    root = shared_slice(shared_catsdogs, tmp_path / "slice", 20, 10)
    snapshots = {}
    original = backbones.BackboneClassifier.unfreeze_last_blocks

    def at_the_stage_boundary(model, count):
        snapshots["stage one"] = {k: v.cpu().clone() for k, v in model.backbone.state_dict().items()}
        snapshots["model"] = model
        original(model, count)

    monkeypatch.setattr(backbones.BackboneClassifier, "unfreeze_last_blocks", at_the_stage_boundary)
    pretrained = backbones.create_backbone("efficientnet_lite0")
    run = sv.train(root, "catsdogs-finetune", out=tmp_path / "run", progress=False, cache_dir=tmp_path / "cache",
                   image_size=96, epochs=1, steps_per_epoch=2, fine_tune_epochs=1, fine_tune_learning_rate=1e-3)
    before = pretrained.state_dict()
    assert snapshots["stage one"].keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in snapshots["stage one"].items())  # stage one: frozen
    after = {k: v.cpu() for k, v in snapshots["model"].backbone.state_dict().items()}  # trained on any device
    assert torch.equal(after["blocks.4.0.conv_pw.weight"], before["blocks.4.0.conv_pw.weight"])  # still frozen
    assert torch.equal(after["blocks.6.0.bn1.running_mean"], before["blocks.6.0.bn1.running_mean"])  # statistics kept
    assert not torch.equal(after["blocks.6.0.conv_pw.weight"], before["blocks.6.0.conv_pw.weight"])  # tuned
    assert not torch.equal(after["conv_head.weight"], before["conv_head.weight"])
    stages = (run.path / "history.csv").read_text().splitlines()
    assert stages[0].endswith("stage") and stages[1].endswith(",1") and stages[2].endswith(",2")


def test_features_are_computed_once_and_reused(tmp_path, monkeypatch):
    from conftest import make_image_folder

    from smallvision import transfer

    root = make_image_folder(tmp_path / "pets", per_class=4)
    options = {"progress": False, "cache_dir": tmp_path / "cache", "image_size": 32, "epochs": 2}
    first = sv.train(root, "catsdogs-features", out=tmp_path / "first", **options)
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 3  # train, validation, test

    def not_again(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(transfer, "extract_features", not_again)
    second = sv.train(root, "catsdogs-features", out=tmp_path / "second", **options)
    assert second.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    assert second.metrics["test_loss"] == first.metrics["test_loss"]
    trained, again = first.model.state_dict(), second.model.state_dict()
    assert trained.keys() == again.keys()
    for name, tensor in trained.items():  # the same features and seed: the same head, bit for bit
        assert torch.equal(tensor.cpu(), again[name].cpu()), name
