"""Calibration: the expected calibration error by hand, a temperature that mends an over-confident model
without changing its answers, the runs that fit and keep one, and the temperature carried into every
probability a run shows or exports (Run, evaluate, ONNX, Keras)."""

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from smallvision.calibration import calibrate, fit_temperature, probabilities_at, set_temperature
from smallvision.metrics import bin_sums, expected_calibration_error
from smallvision.models.layers import Dense, Flatten, Sequential


def test_the_calibration_error_by_hand():
    # top probabilities 0.95, 0.95 (bin 14, one right) and 0.55 (bin 8, right): |0.95 - 0.5| * 2/3 + |0.55 - 1| / 3
    probabilities = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.55, 0.45]])
    labels = torch.tensor([0, 0, 0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.45 * 2 / 3 + 0.45 / 3)
    sums = bin_sums(probabilities, labels)
    assert sums[0].tolist()[14] == 2 and sums[0].tolist()[8] == 1 and float(sums[2].sum()) == 2


def test_a_temperature_mends_an_over_confident_model_and_keeps_its_answers():
    """Labels drawn from softmax(z), a model answering 4z: too sure. The fitted temperature is near 4, the error
    and the NLL fall, and no answer changes."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 3, generator=generator) * 1.5
    labels = torch.multinomial(z.softmax(1), 1, generator=generator).flatten()
    head = Sequential([Flatten(), Dense(3, activation="softmax")], (3, 1, 1))
    logits = (4 * z)[None]  # one view
    calibration = calibrate(head, logits, labels)
    assert calibration.kept and calibration.temperature == pytest.approx(4.0, rel=0.1)
    assert calibration.ece_after < 0.03 < 0.1 < calibration.ece_before
    assert calibration.nll_after < calibration.nll_before
    after = probabilities_at(head, logits, calibration.temperature)
    assert torch.equal(after.argmax(1), probabilities_at(head, logits, 1.0).argmax(1))
    # a model that is already calibrated keeps T = 1 within the search's precision, and would not be kept by much
    assert fit_temperature(head, z[None], labels) == pytest.approx(1.0, abs=0.1)


def test_the_network_divides_by_its_temperature_everywhere():
    head = Sequential([Flatten(), Dense(2, activation="softmax")], (4, 1, 1))
    x = torch.randn(5, 4, 1, 1)
    plain = head.predict_proba(head(x))
    set_temperature(head, 2.0)
    assert torch.allclose(head.predict_proba(head(x)), torch.softmax(head(x) / 2.0, 1))
    assert not torch.allclose(head.predict_proba(head(x)), plain)
    assert torch.equal(head.predict_proba(head(x)).argmax(1), plain.argmax(1))
    sigmoid = Sequential([Flatten(), Dense(1, activation="sigmoid")], (4, 1, 1))
    set_temperature(sigmoid, 3.0)
    assert torch.allclose(sigmoid.predict_proba(sigmoid(x))[:, 1], torch.sigmoid(sigmoid(x).view(-1) / 3.0))


def test_runs_fit_a_temperature_on_validation_and_keep_it_only_where_it_helps(runs_of_every_kind):
    for kind in ("sigmoid", "small_convnet", "features", "finetune", "mnist"):
        run = runs_of_every_kind[kind]
        record = run.metrics["calibration"]
        assert record["images"] > 0
        # IDX digits have no validation split: training images the unknown scorer's reference left out
        assert record["fitted_on"] == ("training images not in the reference" if kind == "mnist" else "validation")
        assert record["kept"] == (record["nll_after"] < record["nll_before"] - 1e-6), kind
        written = json.loads((run.path / "model.json").read_text()).get("temperature")
        assert written == (pytest.approx(record["temperature"], rel=1e-5) if record["kept"] else None), kind
        assert "test_ece" in run.metrics


@pytest.fixture(scope="module")
def warm_run(runs_of_every_kind, tmp_path_factory):
    """The sigmoid run, copied, with a temperature of 2.5 written into its model.json."""
    from smallvision.run import load_run

    path = tmp_path_factory.mktemp("calibrated") / "warm"
    shutil.copytree(runs_of_every_kind["sigmoid"].path, path)
    meta = json.loads((path / "model.json").read_text())
    meta["temperature"] = 2.5
    (path / "model.json").write_text(json.dumps(meta))
    return load_run(path, device="cpu"), load_run(runs_of_every_kind["sigmoid"].path, device="cpu")


def test_a_run_with_a_temperature_shows_and_exports_calibrated_probabilities(warm_run, tmp_path):
    from smallvision.keras_files import export_keras
    from smallvision.onnx_export import export_onnx, parity

    warm, cold = warm_run
    images = torch.randint(0, 256, (6, *warm.meta.architecture.input_shape), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    # the cold run's logits through its own inference path (bf16 where the CPU has it), then divided by T
    logits = torch.logit(cold.probabilities(images)[:, 1].double()) * cold.model.temperature
    assert torch.allclose(warm.probabilities(images)[:, 1].double(), torch.sigmoid(logits / 2.5), atol=1e-5)
    out = export_onnx(warm, tmp_path / "warm.onnx")
    assert parity(warm, out).difference < 1e-4  # the temperature is inside the graph
    keras = export_keras(warm, tmp_path / "warm.keras")
    import h5py

    with zipfile.ZipFile(keras) as archive, h5py.File(archive.open("model.weights.h5"), "r") as store:
        paths = []
        store.visit(lambda name: paths.append(name) if name.endswith("vars/0") else None)
        kernel = np.asarray(store[paths[-1]])
    last = list(cold.model.layers.values())[-1]
    assert np.allclose(kernel.reshape(-1), last.linear.weight.detach().numpy().T.reshape(-1) / 2.5, atol=1e-7)


def test_evaluate_reports_the_calibration_error_and_draws_the_diagram(warm_run):
    from smallvision.evaluation import evaluate_run

    warm, _ = warm_run
    evaluation = evaluate_run(warm)
    assert 0 <= evaluation.metrics["ece"] <= 1
    assert (evaluation.directory / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    assert "calibration error (ECE)" in evaluation.report
