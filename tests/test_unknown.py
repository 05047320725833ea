""""None of these": the unknown scorer by hand, photos of a kind never trained on called unknown and the training
kinds not, the answers of predict, evaluate, serve and an ONNX export agreeing, an old run without the scorer
still predicting, and `calibrate` fitting one for it (and refusing what it cannot fit on)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import COLOURS, make_image_folder, write_image
from smallvision.errors import SmallvisionError
from smallvision.unknown import FILE, K, MIN_HELD, UnknownScorer, fit_unknown


def test_the_score_is_the_cosine_distance_to_the_kth_nearest_reference():
    reference = torch.eye(3)[[0, 0, 1, 1, 2]].float()  # two of e0, two of e1, one of e2
    scorer = UnknownScorer(reference, 2, 0.5, 0.05)
    scores = scorer.scores(torch.tensor([[2.0, 0, 0], [0, 0, 1], [1, 1, 0]]))
    # e0 has two references at distance 0; e2 one at 0 and the next at 1; (e0+e1)/√2 two at 1 - 1/√2
    assert scores.tolist() == pytest.approx([0.0, 1.0, 1 - 2 ** -0.5], abs=1e-6)
    assert scorer.is_unknown(scores).tolist() == [False, True, False]


def test_the_threshold_calls_the_asked_share_of_held_out_images_unknown():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 4
    def sample(n):
        return centres[torch.arange(n) % 3] + torch.randn(n, 16, generator=generator)
    scorer = fit_unknown(sample(600), sample(400), 0.05)
    fresh = scorer.is_unknown(scorer.scores(sample(3000))).float().mean()
    assert 0.02 < fresh < 0.09  # about the 5% asked for, on images the threshold never saw
    far = scorer.scores(torch.randn(200, 16, generator=generator) * 4)  # no class's centre
    assert scorer.is_unknown(far).float().mean() > 0.9
    with pytest.raises(SmallvisionError, match=f"at least {MIN_HELD} held-out"):
        fit_unknown(sample(100), sample(MIN_HELD - 1), 0.05)
    with pytest.raises(SmallvisionError, match="between 0 and 1"):
        fit_unknown(sample(100), sample(100), 1.5)


@pytest.fixture(scope="module")
def birds(tmp_path_factory):
    """Photos of a kind no run trained on: green, where the runs saw red cats and blue dogs."""
    folder = tmp_path_factory.mktemp("birds")
    return [write_image(folder / f"bird{i}.png", COLOURS["birds"], seed=500 + i) for i in range(10)]


@pytest.mark.parametrize("kind", ["sigmoid", "small_convnet", "features", "finetune"])
def test_photos_of_no_class_are_called_unknown_and_the_classes_own_are_not(runs_of_every_kind, birds, kind):
    run = runs_of_every_kind[kind]
    assert run.unknown is not None and (run.path / FILE).is_file()
    recorded = json.loads((run.path / "model.json").read_text())["unknown"]
    assert recorded["k"] == K and recorded["threshold"] == run.unknown.threshold and recorded["held_out"] == "validation"
    test = sorted((run.path.parent / "pets" / "test").rglob("*.png"))
    known = run.predict(test)
    unknown = run.predict(birds)
    assert all(answer["unknown"] for answer in unknown), kind
    assert sum(answer["unknown"] for answer in known) <= len(known) // 4, kind
    # the label is still the class it would have been, and the score is what decides
    assert all(answer["label"] in run.class_names and answer["unknown_score"] > run.unknown.threshold
               for answer in unknown)
    assert 0 <= run.metrics["test_unknown_rate"] <= 0.25


def test_evaluate_reports_the_share_called_unknown_and_shows_the_least_known(runs_of_every_kind):
    from smallvision.evaluation import evaluate_run

    evaluation = evaluate_run(runs_of_every_kind["small_convnet"])
    assert evaluation.metrics["unknown_rate"] == pytest.approx(
        float((evaluation.unknown_scores > evaluation.metrics["unknown_threshold"]).float().mean()), abs=1e-6)
    assert "called unknown" in evaluation.report
    assert (evaluation.directory / "unknown.png").read_bytes()[:4] == b"\x89PNG"
    header = (evaluation.directory / "predictions.csv").read_text().splitlines()[0]
    assert "unknown_score" in header.split(",")


@pytest.fixture
def old_run(runs_of_every_kind, tmp_path):
    """The small_convnet run as an earlier release wrote it: no temperature, no scorer."""
    path = tmp_path / "old"
    shutil.copytree(runs_of_every_kind["small_convnet"].path, path)
    meta = json.loads((path / "model.json").read_text())
    meta.pop("unknown"), meta.pop("temperature", None)
    (path / "model.json").write_text(json.dumps(meta))
    (path / FILE).unlink()
    return path


def test_an_old_run_still_predicts_and_calibrate_fits_it_a_scorer(old_run, birds):
    from smallvision.recalibrate import calibrate_run
    from smallvision.run import load_run

    answers = load_run(old_run, device="cpu").predict(birds[:2])
    assert all("unknown" not in answer and answer["label"] for answer in answers)
    done = calibrate_run(old_run, device="cpu")
    assert done["unknown"]["threshold"] > 0 and done["calibration"]["images"] >= MIN_HELD
    run = load_run(old_run, device="cpu")
    assert run.unknown is not None and all(answer["unknown"] for answer in run.predict(birds))
    assert json.loads((old_run / "metrics.json").read_text())["calibration"]["source"] == str(run.meta.source)


def test_calibrate_refuses_what_it_cannot_fit_on_and_changes_nothing(old_run, tmp_path):
    before = {name: (old_run / name).read_bytes() for name in ("model.json", "metrics.json")}
    other = make_image_folder(tmp_path / "other", classes=("cats", "birds"), per_class=12)
    few = make_image_folder(tmp_path / "few", splits=(), per_class=5)
    command = [sys.executable, "-m", "smallvision", "calibrate", str(old_run)]
    for extra, expected in (([str(other)], "birds"), ([str(few)], f"needs at least {MIN_HELD}"),
                            (["--unknown-rate", "2"], "between 0 and 1")):
        result = subprocess.run(command + extra, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert {name: (old_run / name).read_bytes() for name in before} == before
    assert not (old_run / FILE).exists()


def test_the_onnx_export_carries_the_scorer_and_answers_as_the_run(runs_of_every_kind, birds, tmp_path):
    from smallvision.onnx_export import export_onnx, parity
    from smallvision.onnx_model import OnnxModel
    from smallvision.run import load_run

    run = load_run(runs_of_every_kind["features"].path, device="cpu")
    path = export_onnx(run, tmp_path / "pets.onnx")
    check = parity(run, path)
    assert check.within_bar and check.unknown_difference < 1e-4 and check.decisions_differ == 0
    exported = OnnxModel(path)
    assert exported.unknown_threshold == pytest.approx(run.unknown.threshold)
    # (the run's own answers come in bf16 where the CPU has it: `parity` compares with it in fp32)
    assert all(answer["unknown"] and answer["unknown_score"] > exported.unknown_threshold
               for answer in exported.predict(birds))


def test_serve_says_none_of_these_in_its_answer(runs_of_every_kind, birds):
    from fastapi.testclient import TestClient

    from smallvision.serve.app import create_app

    with TestClient(create_app([runs_of_every_kind["small_convnet"].path], device="cpu")) as client:
        bird = client.post("/predict", files=[("files", ("bird.png", birds[0].read_bytes(), "image/png"))]).json()
        assert bird["predictions"][0]["unknown"] is True and bird["predictions"][0]["unknown_score"] > 0
        gradcam = client.post("/gradcam", content=birds[0].read_bytes(), headers={"Content-Type": "image/png"})
        assert gradcam.status_code == 200 and gradcam.headers["X-Label"] in ("cats", "dogs")
    with TestClient(create_app([runs_of_every_kind["mnist"].path], device="cpu")) as client:  # no scorer there
        digit = np.zeros((28, 28), np.uint8)
        from PIL import Image
        import io

        buffer = io.BytesIO()
        Image.fromarray(digit).save(buffer, format="PNG")
        answer = client.post("/predict", content=buffer.getvalue(), headers={"Content-Type": "image/png"}).json()
        prediction = answer["predictions"][0]
        assert ("unknown" in prediction) == (runs_of_every_kind["mnist"].unknown is not None)


def test_an_unknown_rate_outside_zero_to_one_is_the_recipes_own_error():
    from smallvision.recipe import Recipe

    assert Recipe().replace(unknown_rate=0.1).run.unknown_rate == 0.1
    for rate in (0, 1, -0.5, 2):
        with pytest.raises(SmallvisionError, match="run.unknown_rate is the share of validation images"):
            Recipe().replace(unknown_rate=rate)


LAYERS = "Conv2D(4, 3, activation='relu') MaxPooling2D(2) Flatten() Dense(8, activation='relu') Dense(3, activation='softmax')"


def small_training(epochs: int = 2):
    """A three-class network on 80 random 12x12 images, and 40 for validation, in fp32 on the CPU."""
    from smallvision.data.imageset import ImageSet
    from smallvision.models import recipe_model
    from smallvision.recipe import load_recipe

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (120, 1, 12, 12), dtype=torch.uint8, generator=generator)
    labels = torch.arange(120) % 3
    train, validation = (ImageSet(images[part], labels[part], ["a", "b", "c"]) for part in (slice(0, 80), slice(80, None)))
    recipe = load_recipe("seed-mnist").replace(layers=LAYERS, batch_size=20, precision="fp32", device="cpu", epochs=epochs)
    torch.manual_seed(0)
    return recipe_model(recipe, (1, 12, 12), 3), train, validation, recipe


def test_the_fit_after_training_takes_the_loops_last_validation_instead_of_a_second_pass(monkeypatch):
    from smallvision import inference
    from smallvision.calibration import set_temperature
    from smallvision.inference import fit_after_training
    from smallvision.loop import Loop

    model, train, validation, recipe = small_training()
    loop = Loop(model, train, recipe, validation, device=torch.device("cpu"), progress="off")
    loop.fit()
    assert loop.validated is not None and loop.validated[0] == 2  # the last epoch's, the weights unchanged since
    images_in, passes = [], inference.split_outputs
    monkeypatch.setattr(inference, "split_outputs", lambda model, data, *rest: images_in.append(len(data))
                        or passes(model, data, *rest))
    fit = (model, train, validation, recipe.preprocess, "fp32", torch.device("cpu"), False, 0.05, 0, 32)
    reused = fit_after_training(*fit, validated=loop.validated[1])
    assert sum(images_in) == 32  # the reference's images only
    images_in.clear()
    set_temperature(model, None)
    own = fit_after_training(*fit)
    assert sum(images_in) == 32 + len(validation)
    assert reused.calibration.temperature == pytest.approx(own.calibration.temperature, rel=1e-6)
    assert reused.unknown.threshold == pytest.approx(own.unknown.threshold, rel=1e-6)


def test_keeping_an_earlier_epochs_weights_drops_the_last_validation():
    from types import SimpleNamespace

    from smallvision.callbacks import Best, KeepBest

    model = torch.nn.Linear(2, 2)
    for best_epoch, kept in ((3, True), (2, False)):
        loop = SimpleNamespace(model=model, validated=(3, "outputs"), state=SimpleNamespace(
            best=Best(best_epoch, 0.1, model.state_dict()), history=SimpleNamespace(kept=None)))
        KeepBest("val_loss").on_train_end(loop)
        assert (loop.validated is not None) == kept


def test_the_reference_tap_keeps_the_last_epochs_features_of_training_images():
    from smallvision.callbacks import ReferenceTap
    from smallvision.inference import split_outputs
    from smallvision.loop import Loop

    model, train, validation, recipe = small_training(epochs=3)
    last = list(model.layers.values())[-1]  # its input is the penultimate features
    for layer in list(model.layers.values())[:-1]:
        layer.requires_grad_(False)  # features that stay still as the last layer trains, as a frozen backbone's
    tap = ReferenceTap(last, 30)
    Loop(model, train, recipe, validation, device=torch.device("cpu"), callbacks=[tap], progress="off").fit()
    taken = tap.features
    assert taken is not None and taken.shape == (30, 8) and not last._forward_pre_hooks  # the hook is gone
    features = split_outputs(model, train, recipe.preprocess, "fp32", torch.device("cpu")).features
    distance, nearest = torch.cdist(taken, features).min(1)
    apart = torch.cdist(features, features).median()  # how far two training images' features typically are
    assert distance.max() < 0.01 * apart and len(set(nearest.tolist())) == 30  # 30 training images' own features
    short = ReferenceTap(last, 81)  # more than an epoch's 80 images: no reference (the fit makes its own pass)
    Loop(model, train, recipe, validation, device=torch.device("cpu"), callbacks=[short], progress="off").fit()
    assert short.features is None
