"""`export --format onnx` and `predict MODEL.onnx`: the file answers as the run does, for every kind of
network a run holds, at any batch size, and predict reads it with onnxruntime alone (no PyTorch)."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smallvision.cli import main
from smallvision.onnx_model import FORMAT, METADATA_KEYS

BAR = 1e-4
KINDS = ["mnist", "sigmoid", "small_convnet", "features", "finetune", "layers"]
# Every word of the vocabulary whose export could go wrong: separable and depthwise convolutions, Keras'
# 'same' padding done by hand (strided, and the poolings' -inf and counted-average padding), Residual,
# batch norm, the dropouts (nothing in inference), ReLU's cap, LeakyReLU and a Softmax layer at the end.
LAYERS = ("ZeroPadding2D(1) SeparableConv2D(8, 3, padding='same', activation='relu') BatchNormalization() "
          "DepthwiseConv2D(3, strides=2, padding='same') LeakyReLU() MaxPooling2D(3, strides=2, padding='same') "
          "Residual([Conv2D(8, 3, padding='same', activation='relu'), SpatialDropout2D(0.1)]) "
          "AveragePooling2D(2, padding='same') ReLU(max_value=6.0) Conv2D(8, 3, activation='relu') MaxPooling2D(2) "
          "GlobalMaxPooling2D() Dropout(0.2) Dense(16, activation='tanh') Dense(3) Softmax()")


@pytest.fixture(scope="module")
def kinds(runs_of_every_kind, tmp_path_factory) -> dict:
    """conftest's runs of every kind, and a layer list of the awkward words trained for a moment on noise."""
    import smallvision as sv
    from conftest import write_idx_source

    base = tmp_path_factory.mktemp("onnx-layers")
    rng = np.random.default_rng(0)
    tiny = write_idx_source(base / "tiny", rng.integers(0, 256, (60, 28, 28), dtype=np.uint8),
                            np.arange(60, dtype=np.uint8) % 3, rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
                            np.arange(30, dtype=np.uint8) % 3)
    layers = sv.train(tiny, "fast-mnist", out=base / "layers", layers=LAYERS, epochs=1, progress=False,
                      cache_dir=base / "cache")
    return {**runs_of_every_kind, "layers": layers}


@pytest.fixture(scope="module")
def exported(kinds, tmp_path_factory):
    """Each kind exported once through the CLI, into a folder of its own: {kind: (file, exit status, stdout)}."""
    done = {}

    def export(kind):
        if kind not in done:
            out = tmp_path_factory.mktemp(f"onnx-{kind}") / f"{kind}.onnx"
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                status = main(["export", str(kinds[kind].path), "--format", "onnx", "-o", str(out)])
            done[kind] = (out, status, printed.getvalue())
        return done[kind]
    return export


# the frozen backbone's export is the fine-tuned one's network again, and 15 s of torch.export on a 2-core AVX2
# CPU: with the long trainings (bin/test -m slow)
@pytest.mark.parametrize("kind", [pytest.param(kind, marks=pytest.mark.slow) if kind == "features" else kind
                                  for kind in KINDS])
def test_the_file_answers_as_the_run_at_any_batch_size(kind, kinds, exported):
    import onnx
    import torch

    from smallvision.onnx_model import OnnxModel
    from smallvision.run import load_run
    from smallvision.inference import predict_probabilities

    out, status, printed = exported(kind)
    lines = printed.strip().splitlines()
    assert status == 0, printed
    assert lines[-1] == str(out) and lines[0].startswith(f"wrote {out} ")
    assert "test images of" in lines[1] and "bar 1e-04" in lines[1]
    reported = float(lines[1].split("(fp32): ")[1].split()[0])
    assert reported <= BAR
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # one file: no external data beside it
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)

    run = load_run(kinds[kind].path, "cpu")
    data = run.labelled_split(split="test")
    images = torch.cat([data.images[:5], torch.randint(0, 256, (3, *data.images.shape[1:]), dtype=torch.uint8,
                                                       generator=torch.Generator().manual_seed(1))])
    ours = predict_probabilities(run.model, images, run.preprocess, "fp32", torch.device("cpu"), run.test_time_flip)
    model = OnnxModel(out)
    pixels = images.permute(0, 2, 3, 1).numpy()
    five, one = model.probabilities(pixels[:5]), model.probabilities(pixels[5:6])
    every = model.probabilities(pixels)
    assert five.shape == (5, len(run.class_names)) and one.shape == (1, len(run.class_names))
    assert np.abs(five - ours[:5].numpy()).max() <= BAR
    assert np.abs(one - ours[5:6].numpy()).max() <= BAR
    assert np.abs(every - ours.numpy()).max() <= BAR
    assert np.allclose(every.sum(axis=1), 1, atol=1e-5)


def test_the_metadata_says_what_predict_needs_and_what_the_run_was(kinds, exported):
    import onnx

    for kind in ("mnist", "finetune"):
        run, (out, _, _) = kinds[kind], exported(kind)
        proto = onnx.load(str(out))
        meta = {entry.key: entry.value for entry in proto.metadata_props}
        assert set(METADATA_KEYS) <= set(meta) and meta["format"] == FORMAT
        assert json.loads(meta["class_names"]) == run.class_names
        channels, height, width = run.meta.architecture.input_shape
        assert json.loads(meta["input_shape"]) == [channels, height, width]
        assert json.loads(meta["input_size"]) == [height, width]
        assert json.loads(meta["preprocessing"]) == json.loads((run.path / "model.json").read_text())["preprocessing"]
        assert json.loads(meta["test_time_flip"]) is run.test_time_flip
        assert json.loads(meta["metrics"]) == run.metrics and meta["recipe"] == run.recipe.name
        assert meta["source"] == run.meta.source and meta["precision"].startswith("fp32")
        batch, *rest = proto.graph.input[0].type.tensor_type.shape.dim
        assert batch.dim_param and not batch.dim_value  # the batch size is free, not the example's
        assert [dim.dim_value for dim in rest] == [height, width, channels]
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert json.loads(meta["test_time_flip"]) is True  # the fine-tuned run's recipe scores with flipping
    mnist = json.loads({e.key: e.value for e in onnx.load(str(exported("mnist")[0])).metadata_props}["preprocessing"])
    assert mnist["invert_light_background"] is True


def digit_files(folder: Path) -> list[Path]:
    """Digits as people photograph them (dark ink on light paper, small on a big page), one on black,
    and a file that is not an image."""
    from PIL import Image, ImageDraw

    folder.mkdir()
    files = []
    for index, (paper, ink, size) in enumerate([(255, 0, 200), (230, 30, 90), (0, 255, 28)]):
        image = Image.new("L", (size, size), paper)
        ImageDraw.Draw(image).line([(size * 0.3, size * 0.2), (size * 0.6, size * 0.8)], fill=ink, width=size // 12 + 1)
        files.append(folder / f"digit{index}.png")
        image.save(files[-1])
    files.append(folder / "broken.png")
    files[-1].write_bytes(b"\x89PNG broken")
    return files


def photo_files(folder: Path) -> list[Path]:
    from conftest import write_image

    files = [write_image(folder / "a.png", (200, 60, 40), seed=5), write_image(folder / "b.jpg", (40, 90, 210), seed=6),
             write_image(folder / "c.png", (90, 90, 90), size=(300, 200), mode="L", seed=7)]
    files.append(folder / "d.jpg")
    files[-1].write_bytes(b"\xff\xd8\xff truncated")
    return files


@pytest.mark.parametrize("kind", ["mnist", "finetune"])
def test_predict_onnx_answers_as_predict_run(kind, kinds, exported, tmp_path, capsys):
    from smallvision.run import load_run

    files = digit_files(tmp_path / "in") if kind == "mnist" else photo_files(tmp_path / "in")
    out = exported(kind)[0]
    capsys.readouterr()
    assert main(["predict", str(out), *map(str, files), "--top", "2"]) == 2  # the damaged file
    captured = capsys.readouterr()
    answers = [json.loads(line) for line in captured.out.splitlines()]
    assert captured.err.count("\n") == 1 and f"{files[-1]}: cannot use as an image" in captured.err
    run = load_run(kinds[kind].path, "cpu")
    run.precision = "fp32"  # the file is fp32; the run answers in bf16 where this CPU computes it natively
    expected = run.predict(files, top=2)
    assert [a["path"] for a in answers] == [e["path"] for e in expected] == list(map(str, files))
    assert answers[-1] == expected[-1] and "error" in answers[-1]
    for answer, wanted in zip(answers[:-1], expected[:-1]):
        assert set(answer) == set(wanted) == {"path", "label", "probability", "top", "unknown", "unknown_score"}
        assert answer["unknown"] == wanted["unknown"]  # the scorer and threshold travel inside the file
        assert abs(answer["unknown_score"] - wanted["unknown_score"]) <= BAR * max(wanted["unknown_score"], 0.01)
        assert answer["label"] == wanted["label"] and len(answer["top"]) == 2
        assert [name for name, _ in answer["top"]] == [name for name, _ in wanted["top"]]
        assert abs(answer["probability"] - wanted["probability"]) <= BAR
        assert all(abs(a[1] - w[1]) <= BAR for a, w in zip(answer["top"], wanted["top"]))


def test_predict_onnx_does_not_load_pytorch(exported, tmp_path):
    files = digit_files(tmp_path / "in")[:2]
    script = ("import json, sys\n"
              "from smallvision.cli import main\n"
              f"status = main(['predict', {str(exported('mnist')[0])!r}, {str(files[0])!r}, {str(files[1])!r}])\n"
              "print(json.dumps({'status': status, 'torch': 'torch' in sys.modules, "
              "'onnxruntime': 'onnxruntime' in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *answers, verdict = done.stdout.strip().splitlines()
    assert json.loads(verdict) == {"status": 0, "torch": False, "onnxruntime": True}
    assert len(answers) == 2 and all("label" in json.loads(line) for line in answers)


def fails_cleanly(capsys, argv, expected):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smallvision: error: ") and "Traceback" not in err
    assert expected in err, err


def test_files_that_are_not_our_exports_fail_in_one_line(exported, tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    image = digit_files(tmp_path / "in")[0]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf at all \xff\x00" * 10)
    fails_cleanly(capsys, ["predict", str(garbage), str(image)], "garbage.onnx: not a usable ONNX file")

    ours = exported("mnist")[0]
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(ours.read_bytes()[: ours.stat().st_size // 2])
    fails_cleanly(capsys, ["predict", str(truncated), str(image)], "truncated.onnx: not a usable ONNX file")

    identity = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]), opset_imports=[helper.make_opsetid("", 17)])
    identity.ir_version = 8
    foreign = tmp_path / "foreign.onnx"
    onnx.save(identity, str(foreign))
    fails_cleanly(capsys, ["predict", str(foreign), str(image)], "foreign.onnx: not a smallvision ONNX export "
                                                                  "(no smallvision metadata")

    for key, value, problem in [("class_names", "[not json", "not JSON"),
                                ("input_shape", "[3, 28, 28]", "its input is tensor(uint8)"),
                                ("format", "smallvision-onnx/99", "'smallvision-onnx/99'"),
                                ("preprocessing", '{"invert_light_background": "yes"}', "invert_light_background")]:
        proto = onnx.load(str(ours))
        entry = next(entry for entry in proto.metadata_props if entry.key == key)
        entry.value = value
        edited = tmp_path / f"edited-{key}.onnx"
        onnx.save(proto, str(edited))
        fails_cleanly(capsys, ["predict", str(edited), str(image)], f"edited-{key}.onnx: not a smallvision ONNX "
                                                                    f"export")
        fails_cleanly(capsys, ["predict", str(edited), str(image)], problem)

    fails_cleanly(capsys, ["predict", str(tmp_path / "absent.onnx"), str(image)], "absent.onnx: no such file")
    fails_cleanly(capsys, ["predict", str(ours), str(image), "--device", "cuda"], "an .onnx file runs on the CPU")


def test_export_refuses_a_path_it_cannot_write_before_exporting(kinds, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    run = str(kinds["mnist"].path)
    fails_cleanly(capsys, ["export", run, "--format", "onnx", "-o", str(tmp_path / "a-file" / "m.onnx")],
                  "cannot write there")
    fails_cleanly(capsys, ["export", run, "--format", "onnx", "-o", str(tmp_path / "m.txt")], "must end in .onnx")
    (tmp_path / "dir.onnx").mkdir()
    fails_cleanly(capsys, ["export", run, "--format", "onnx", "-o", str(tmp_path / "dir.onnx")], "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "dir.onnx"]  # nothing half-written


def test_parity_falls_back_to_random_images_when_the_data_is_gone(kinds, exported, tmp_path):
    from smallvision.onnx_export import PARITY_IMAGES, parity, parity_images
    from smallvision.run import load_run

    moved = tmp_path / "moved"
    shutil.copytree(kinds["mnist"].path, moved)
    meta = json.loads((moved / "model.json").read_text())
    meta["source"] = str(tmp_path / "gone")
    (moved / "model.json").write_text(json.dumps(meta))
    (moved / "data.json").unlink(missing_ok=True)
    run = load_run(moved, "cpu")
    images, what = parity_images(run)
    assert tuple(images.shape) == (PARITY_IMAGES, 1, 28, 28) and what.startswith(f"{PARITY_IMAGES} random images")
    check = parity(run, exported("mnist")[0])  # the same weights: the file still answers as the run
    assert check.within_bar and check.images == what


def test_read_pixels_is_load_image_without_pytorch(tmp_path):
    """predict's pixels from the file, as numpy (the ONNX path) and as a tensor (the run's), and without
    framing the very pixels training decoded from the same bytes."""
    from smallvision.images import decode_image, load_image, read_pixels

    for path in digit_files(tmp_path / "digits")[:3] + photo_files(tmp_path / "photos")[:3]:
        for channels, invert in [(1, True), (1, False), (3, False)]:
            pixels = read_pixels(path, channels, 28, 28, invert)
            assert pixels.dtype == np.uint8 and pixels.shape == (28, 28, channels) and pixels.flags.writeable
            assert np.array_equal(pixels.transpose(2, 0, 1), load_image(path, channels, 28, 28, invert).numpy())
            if not invert:
                assert np.array_equal(pixels, decode_image(path.read_bytes(), channels, 28, 28)[0])
    framed = read_pixels(tmp_path / "digits" / "digit0.png", 1, 28, 28, True)
    assert framed[0].max() == 0 and framed.max() > 128  # dark ink on white paper: inverted, framed in black


def test_the_package_imports_lazily():
    script = ("import sys\n"
              "import smallvision as sv, smallvision.cli, smallvision.onnx_model\n"
              "assert 'torch' not in sys.modules, 'torch at import'\n"
              "import smallvision.loop, smallvision.workflow\n"
              "assert sv.train.__module__ == 'smallvision.workflow' and callable(sv.train)\n"
              "from smallvision import train, Sequential, layers, summary, SmallvisionError\n"
              "assert train is sv.train and layers.__name__ == 'smallvision.models.layers' and callable(summary)\n"
              "assert sorted(set(sv.__all__) - set(dir(sv))) == []\n"
              "try:\n    sv.nothing_here\nexcept AttributeError as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "has no attribute 'nothing_here'" in done.stdout


def test_damaged_exports_answer_or_fail_in_one_line(exported, tmp_path, capfd):
    """Bytes of a real export changed at random (and cut short): each file is refused with one line
    naming it, or (a changed weight) still answers; nothing else escapes, and onnxruntime prints nothing
    of its own (its retry notice would land among predict's JSON lines)."""
    from smallvision.errors import SmallvisionError
    from smallvision.onnx_model import OnnxModel

    content = exported("mnist")[0].read_bytes()
    rng = np.random.default_rng(0)
    refused = 0
    for attempt in range(150):
        data = bytearray(content)
        for _ in range(rng.integers(1, 8)):
            data[rng.integers(0, len(data))] = rng.integers(0, 256)
        if attempt % 5 == 0:
            data = data[:rng.integers(0, len(data))]
        path = tmp_path / f"damaged-{attempt}.onnx"
        path.write_bytes(bytes(data))
        try:
            answer = OnnxModel(path).probabilities(np.zeros((2, 28, 28, 1), np.uint8))
            assert answer.shape[0] == 2
        except SmallvisionError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            refused += 1
    assert refused >= 20  # the cut files at least
    assert capfd.readouterr() == ("", "")
