"""model.json as one typed value (`runmeta.RunMeta`): the runs 0.1.0 wrote still load and answer as they did,
every field is checked as the file is read (a missing or wrong one: one line naming the field and the file),
and a RunMeta goes to JSON and back unchanged."""

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

import smallvision as sv
from smallvision import __version__
from smallvision.cli import main
from smallvision.errors import SmallvisionError
from smallvision.runmeta import FORMAT, UNRECORDED, Architecture, ImportedFrom, Preprocessing, RunMeta

from conftest import make_image_folder, write_idx_source

OLD_RUNS = Path(__file__).parent / "data" / "runs"  # as 0.1.0 wrote them: see its README.md
# Each old run's probabilities for three random images (torch.randint, generator seeded 0, on the CPU), as the
# code that wrote the runs (0.1.0) gave them.
OLD_PROBABILITIES = {
    "pets-0.1.0": [[0.537607, 0.462393], [0.633241, 0.366759], [0.554371, 0.445629]],
    "digits-0.1.0": [[0.334712, 0.307062, 0.358226], [0.292647, 0.366595, 0.340758],
                     [0.324368, 0.311794, 0.363838]],
    "imported-0.1.0": [[0.268473, 0.468375, 0.263152], [0.268862, 0.466951, 0.264187],
                       [0.268707, 0.467298, 0.263995]],
}
# Every field a model.json must have (0.1.0's runs all do), by its dotted name.
REQUIRED = ["format", "source", "class_names", "output_activation", "precision", "architecture",
            "architecture.model", "architecture.input_shape", "architecture.num_classes", "preprocessing",
            "preprocessing.rescale", "preprocessing.mean", "preprocessing.std", "preprocessing.channels_last",
            "preprocessing.resize", "preprocessing.color_mode", "preprocessing.invert_light_background"]
# The fields a run from before they existed lacks, with the value such a run is read with.
OPTIONAL = {"written_by": UNRECORDED, "precision_reason": None, "test_time_flip": False, "architecture.backbone": None,
            "architecture.dropout": 0.0}


def copied(name: str, tmp_path: Path) -> Path:
    """An old run copied where a test may change it (the committed one stays as it was written)."""
    return Path(shutil.copytree(OLD_RUNS / name, tmp_path / name))


def edited(run: Path, change) -> Path:
    """`run`'s model.json after `change(meta)` (the parsed JSON, changed in place)."""
    meta = json.loads((run / "model.json").read_text())
    change(meta)
    (run / "model.json").write_text(json.dumps(meta))
    return run / "model.json"


def parent_and_key(meta: dict, dotted: str) -> tuple[dict, str]:
    *path, key = dotted.split(".")
    for part in path:
        meta = meta[part]
    return meta, key


def assert_one_line_naming(message: str, *parts: str) -> None:
    assert "\n" not in message and message.strip(), repr(message)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ---------------------------------------------------------------------------------------------------
# The runs 0.1.0 wrote


@pytest.mark.parametrize("name", sorted(OLD_PROBABILITIES))
def test_a_run_written_by_0_1_0_loads_and_answers_as_it_did(name):
    run = sv.load_run(OLD_RUNS / name, "cpu")
    assert run.meta.written_by == UNRECORDED and run.meta.format == FORMAT
    shape = run.meta.architecture.input_shape
    images = torch.randint(0, 256, (3, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run.probabilities(images), torch.tensor(OLD_PROBABILITIES[name]), rtol=0, atol=2e-6)


def test_the_old_folder_run_predicts_files_and_evaluates_from_the_command_line(tmp_path, capsys):
    pets = make_image_folder(tmp_path / "pets", splits=(), per_class=4)  # the classes it was trained on
    run = copied("pets-0.1.0", tmp_path)  # evaluate writes RUN/eval-*/
    answers = sv.load_run(run, "cpu").predict([pets])
    assert len(answers) == 8 and {answer["label"] for answer in answers} <= {"cats", "dogs"}
    capsys.readouterr()
    assert main(["predict", str(run), str(pets / "cats"), "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == [answer["path"] for answer in answers[:4]]
    assert [line["top"] for line in lines] == [answer["top"] for answer in answers[:4]]
    assert main(["evaluate", str(run), str(pets), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "pets all: accuracy" in out and "(8 images; scored whole" in out
    written = json.loads((run / "eval-pets-all" / "metrics.json").read_text())
    assert written["images"] == 8 and written["class_names"] == ["cats", "dogs"]


def test_the_old_digits_run_evaluates_an_idx_source_from_the_command_line(tmp_path, capsys):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8, generator=generator).numpy()
    labels = (torch.arange(12) % 3).to(torch.uint8).numpy()
    digits = write_idx_source(tmp_path / "digits", images, labels, images, labels)
    run = copied("digits-0.1.0", tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(run), str(digits), "--device", "cpu"]) == 0
    assert "digits test: accuracy" in capsys.readouterr().out
    metrics = sv.load_run(run, "cpu").evaluate(digits)
    assert metrics["images"] == 12 and metrics["class_names"] == ["0", "1", "2"]


def test_the_old_runs_export_serve_their_card_and_compare(tmp_path):
    from smallvision.compare import compare_runs
    from smallvision.keras_files import export_keras
    from smallvision.onnx_export import export_onnx
    from smallvision.onnx_model import OnnxModel
    from smallvision.serve.cards import model_card

    run = sv.load_run(OLD_RUNS / "pets-0.1.0", "cpu")
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    exported = OnnxModel(export_onnx(run, tmp_path / "pets.onnx"))
    assert exported.class_names == ["cats", "dogs"]
    assert exported.probabilities(images.permute(0, 2, 3, 1).numpy()) == pytest.approx(
        run.probabilities(images).numpy(), abs=1e-5)
    assert export_keras(run, tmp_path / "pets.keras").stat().st_size > 0
    card = model_card(run, "pets")
    assert card["model"] == "custom" and card["input_shape"] == [3, 16, 16] and card["imported_from"] is None
    imported = sv.load_run(OLD_RUNS / "imported-0.1.0", "cpu")
    assert model_card(imported, "imported")["imported_from"] == "functional_augment.h5"
    assert imported.meta.imported_from == ImportedFrom(
        file=imported.meta.imported_from.file, written_by="Keras 2.21.0",
        left_out=["data_augmentation (RandomFlip, RandomRotation, RandomZoom)"])
    rows = compare_runs([OLD_RUNS / "pets-0.1.0", OLD_RUNS / "digits-0.1.0"])
    assert [row["model"] for row in rows] == ["custom", "custom"]


@pytest.mark.parametrize("name", ["pets-0.1.0", "digits-0.1.0", "imported-0.1.0", "backbone-0.1.0"])
def test_an_old_model_json_reads_and_writes_back_as_it_was_plus_written_by(name, tmp_path):
    path = OLD_RUNS / name / "model.json"
    original = json.loads(path.read_text())
    meta = RunMeta.read(path)
    assert meta.to_json() == {**original, "written_by": UNRECORDED}
    assert RunMeta.from_json(meta.to_json(), path) == meta
    meta.write(tmp_path / "model.json")
    assert RunMeta.read(tmp_path / "model.json") == meta and [p.name for p in tmp_path.iterdir()] == ["model.json"]


def test_a_backbone_model_json_names_its_backbone_and_has_no_layers():
    meta = RunMeta.read(OLD_RUNS / "backbone-0.1.0" / "model.json")
    assert meta.architecture.backbone == "efficientnet_lite0" and meta.architecture.layers is None
    assert meta.architecture.dropout == 0.5 and meta.preprocessing.mean == pytest.approx([127 / 255] * 3)
    assert "layers" not in meta.to_json()["architecture"]


# ---------------------------------------------------------------------------------------------------
# Bad model.json: one line naming the field and the file


@pytest.mark.parametrize("field", REQUIRED)
def test_a_missing_required_field_is_one_line_naming_it_and_the_file(field, tmp_path):
    run = copied("pets-0.1.0", tmp_path)
    path = edited(run, lambda meta: (lambda parent, key: parent.pop(key))(*parent_and_key(meta, field)))
    with pytest.raises(SmallvisionError) as caught:
        sv.load_run(run, "cpu")
    assert_one_line_naming(str(caught.value), str(path), f"no {field!r} field")
    with pytest.raises(SmallvisionError, match=f"no '{field}' field"):
        RunMeta.from_json(json.loads(path.read_text()), path)


@pytest.mark.parametrize("field", ["imported_from.file", "imported_from.written_by"])
def test_an_imported_runs_missing_origin_is_one_line_naming_it_and_the_file(field, tmp_path):
    run = copied("imported-0.1.0", tmp_path)
    path = edited(run, lambda meta: meta["imported_from"].pop(field.split(".")[1]))
    with pytest.raises(SmallvisionError) as caught:
        sv.load_run(run, "cpu")
    assert_one_line_naming(str(caught.value), str(path), f"no {field!r} field")


def test_an_import_from_before_left_out_was_recorded_left_nothing_out(tmp_path):
    run = copied("imported-0.1.0", tmp_path)
    edited(run, lambda meta: meta["imported_from"].pop("left_out"))
    assert sv.load_run(run, "cpu").meta.imported_from.left_out == []


def test_the_missing_field_cli_message_is_one_line(tmp_path, capsys):
    run = copied("digits-0.1.0", tmp_path)
    path = edited(run, lambda meta: meta["architecture"].pop("input_shape"))
    assert main(["predict", str(run), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"smallvision: error: {path}: not a run's model description (no 'architecture.input_shape' field)\n"


@pytest.mark.parametrize("field", sorted(OPTIONAL))
def test_a_field_older_runs_lack_is_read_as_they_meant_it(field, tmp_path):
    run = copied("pets-0.1.0", tmp_path)
    edited(run, lambda meta: (lambda parent, key: parent.pop(key, None))(*parent_and_key(meta, field)))
    loaded = sv.load_run(run, "cpu")
    parent, key = parent_and_key(loaded.meta.to_json(), field)
    assert parent[key] == OPTIONAL[field]


@pytest.mark.parametrize("field, value, expected", [
    ("class_names", "cats", "class_names must be a list of names"),
    ("class_names", [], "class_names must be a list of names"),
    ("architecture", [3, 16, 16], "architecture must be a JSON object"),
    ("architecture.input_shape", [3, 16], "architecture.input_shape must be [channels, height, width]"),
    ("architecture.input_shape", [4, 16, 16], "architecture.input_shape must be 1 or 3 channels"),
    ("architecture.num_classes", 3, "architecture.num_classes must be the number of class_names (2)"),
    ("architecture.dropout", 1.5, "architecture.dropout must be a number in [0, 1)"),
    ("architecture.layers", {"Dense": 2}, "architecture.layers must be a list"),
    ("preprocessing.rescale", "1/255", "preprocessing.rescale must be a number"),
    ("preprocessing.std", [0.5, 0.5, 0.5], "preprocessing needs both mean and std, or neither"),
    ("preprocessing.channels_last", "yes", "preprocessing.channels_last must be true or false"),
    ("preprocessing.color_mode", "L", "preprocessing.color_mode must be RGB for 3-channel images"),
    ("precision", "auto", "precision must be 'bf16' or 'fp32'"),
    ("output_activation", "relu", "output_activation must be 'softmax' or 'sigmoid'"),
    ("test_time_flip", 1, "test_time_flip must be true or false"),
    ("source", None, "source must be the source's name or path"),
    ("written_by", 0.1, "written_by must be a version"),
    ("format", "keras", "format must be 'smallvision-run/1'"),
    ("temperature", -1.0, "temperature must be a positive number or null"),
    ("unknown", [1, 2], "unknown must be a JSON object or null"),
    ("imported_from", "keras", "imported_from must be a JSON object or null"),
])
def test_a_field_of_the_wrong_kind_is_one_line_naming_it_and_the_file(field, value, expected, tmp_path):
    run = copied("pets-0.1.0", tmp_path)
    path = edited(run, lambda meta: (lambda parent, key: parent.__setitem__(key, value))(*parent_and_key(meta, field)))
    with pytest.raises(SmallvisionError) as caught:
        sv.load_run(run, "cpu")
    assert_one_line_naming(str(caught.value), f"{path}: not a run's model description", expected)


def test_a_run_in_a_later_format_asks_for_a_newer_smallvision(tmp_path):
    run = copied("pets-0.1.0", tmp_path)
    path = edited(run, lambda meta: meta.update(format="smallvision-run/2", written_by="0.9.0"))
    with pytest.raises(SmallvisionError) as caught:
        sv.load_run(run, "cpu")
    assert_one_line_naming(str(caught.value), str(path), "written by smallvision 0.9.0 as 'smallvision-run/2'",
                           f"this smallvision ({__version__}) reads 'smallvision-run/1'")


def test_not_an_object_and_not_json(tmp_path):
    run = copied("pets-0.1.0", tmp_path)
    (run / "model.json").write_text("[1, 2]")
    with pytest.raises(SmallvisionError, match="model.json: not a run's model description \\(a JSON array, not an object\\)"):
        sv.load_run(run, "cpu")
    (run / "model.json").write_text('{"format": ')
    with pytest.raises(SmallvisionError) as caught:
        sv.load_run(run, "cpu")
    assert_one_line_naming(str(caught.value), str(run / "model.json"), "unreadable")


# ---------------------------------------------------------------------------------------------------
# The value itself, and what writes it


def full_meta() -> RunMeta:
    return RunMeta(
        source="/data/pets",
        architecture=Architecture(model="custom", input_shape=[3, 32, 32], num_classes=3, dropout=0.25,
                                  layers=[{"class_name": "Flatten", "config": {}},
                                          {"class_name": "Dense", "config": {"units": 3, "activation": "softmax"},
                                           "name": "out"}]),
        class_names=["a", "b", "c"], output_activation="softmax", precision="bf16",
        precision_reason="auto: this CPU computes bf16 natively (AMX)", test_time_flip=True,
        preprocessing=Preprocessing(rescale=1 / 255, mean=[0.5, 0.4, 0.3], std=0.25, channels_last=True,
                                    resize="area when shrinking, bilinear when growing", color_mode="RGB",
                                    invert_light_background=False),
        imported_from=ImportedFrom(file="/models/net.keras", written_by="Keras 3.15.1", left_out=["flip (RandomFlip)"]),
        temperature=1.7, unknown={"kind": "energy", "threshold": -4.5})


def test_a_round_trip_to_json_and_back_is_equal():
    meta = full_meta()
    data = meta.to_json()
    assert data["written_by"] == __version__ and data["format"] == FORMAT
    assert data["architecture"]["input_shape"] == [3, 32, 32] and meta.architecture.input_shape == (3, 32, 32)
    assert RunMeta.from_json(json.loads(json.dumps(data)), "model.json") == meta
    plain = meta.replace(imported_from=None, temperature=None, unknown=None)
    assert RunMeta.from_json(json.loads(json.dumps(plain.to_json()))) == plain


def test_the_slots_for_later_issues_are_left_out_of_the_file_when_empty(tmp_path):
    meta = full_meta().replace(temperature=None, unknown=None, imported_from=None)
    meta.write(tmp_path / "model.json")
    written = json.loads((tmp_path / "model.json").read_text())
    assert not {"temperature", "unknown", "imported_from"} & set(written)
    assert RunMeta.read(tmp_path / "model.json") == meta


def test_a_new_run_and_an_import_write_what_runmeta_reads_with_this_version(tiny_source, tmp_path):
    run = sv.train(tiny_source, "seed-mnist", out=tmp_path / "run", epochs=1, progress=False, device="cpu",
                   layers=["Conv2D(2, 3, activation='relu')", "MaxPooling2D(2)", "Flatten()",
                           "Dense(3, activation='softmax')"])
    written = json.loads((run.path / "model.json").read_text())
    assert written["written_by"] == __version__ and written == run.meta.to_json()
    assert not {"temperature", "unknown", "imported_from"} & set(written)
    assert run.meta.preprocessing.color_mode == "L" and run.meta.architecture.layers[-1]["class_name"] == "Dense"
    from smallvision.keras_files import import_keras

    imported = import_keras(Path(__file__).parent / "data" / "keras" / "functional_augment.h5", tmp_path / "keras")
    written = json.loads((imported.path / "model.json").read_text())
    assert written["written_by"] == __version__ and written == imported.meta.to_json()
    assert imported.meta.imported_from.written_by.startswith("Keras ") and imported.meta.source.startswith("keras:")


def test_runmeta_imports_no_pytorch():
    import subprocess
    import sys

    code = "import sys, smallvision.runmeta; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------
# No import circles in the package


def test_no_module_of_the_package_imports_itself_through_others():
    """Every import (at the top or inside a function) of one module of ours by another: no circle. (Run.evaluate
    once reached evaluation.py, which imports run.py; serve/models.py loaded the served kinds that subclass it.)"""
    package = Path(sv.__file__).parent
    modules = {}
    for file in package.rglob("*.py"):
        parts = list(file.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    imports = {}
    for name, file in modules.items():
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("smallvision"):
                found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                          for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        imports[name] = {other for other in found if other in modules and other not in (name, "smallvision")}

    def circle_from(start: str) -> list[str] | None:
        path, seen = [start], set()

        def walk(module: str) -> list[str] | None:
            for other in sorted(imports[module]):
                if other == start:
                    return path + [start]
                if other not in seen:
                    seen.add(other)
                    path.append(other)
                    found = walk(other)
                    if found:
                        return found
                    path.pop()
            return None

        return walk(start)

    circles = [circle for circle in map(circle_from, sorted(imports)) if circle]
    assert not circles, " ; ".join(" -> ".join(circle) for circle in circles)
