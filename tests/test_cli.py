"""Every bad input gets one line on stderr, exit status 2, no traceback, and nothing lost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smallvision.cli import main
from smallvision.errors import SmallvisionError


def fails_cleanly(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("smallvision: error: ") and "Traceback" not in err
    assert expected in err, err
    return err


def test_unknown_names_suggest_the_nearest(capsys, tiny_source):
    fails_cleanly(capsys, ["train", "mnits"], "did you mean 'mnist'")
    fails_cleanly(capsys, ["train", str(tiny_source), "--recipe", "seed-minst"], "did you mean 'seed-mnist'")
    fails_cleanly(capsys, ["train", str(tiny_source), "--model", "mnist_convnett"], "did you mean 'mnist_convnet'")
    fails_cleanly(capsys, ["summary", "mnist-convnet"], "did you mean 'mnist_convnet'")


def test_missing_and_malformed_inputs(capsys, tmp_path, tiny_source):
    fails_cleanly(capsys, ["train", str(tmp_path / "absent")], "no such directory")
    fails_cleanly(capsys, ["evaluate", str(tmp_path / "absent"), "mnist"], "no such run directory")
    fails_cleanly(capsys, ["train", str(tiny_source), "--recipe", str(tmp_path / "absent.toml")], "does not exist")
    (tiny_source / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x1e" + b"\x01" * 12)
    fails_cleanly(capsys, ["train", str(tiny_source)], "t10k-labels-idx1-ubyte: truncated")


def test_labels_out_of_range(capsys, tiny_source):
    (tiny_source / "classes.txt").write_text("a\nb\n")
    fails_cleanly(capsys, ["train", str(tiny_source)], "label 2 is out of range for 2 classes")


def test_zero_epochs(capsys, tiny_source, tmp_path):
    fails_cleanly(capsys, ["train", str(tiny_source), "--epochs", "0", "--out", str(tmp_path / "run")], "epochs must be at least 1")
    assert not (tmp_path / "run").exists()


def test_an_existing_directory_is_never_overwritten(capsys, tiny_source, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years of work")
    fails_cleanly(capsys, ["train", str(tiny_source), "--out", str(precious)], "is not a smallvision run")
    assert [p.name for p in precious.iterdir()] == ["thesis.txt"]
    assert main(["train", str(tiny_source), "--out", str(precious), "--force", "--epochs", "1", "--quiet"]) == 0
    assert (precious / "thesis.txt").read_text() == "four years of work" and (precious / "model.json").is_file()
    capsys.readouterr()
    before = (precious / "model.safetensors").read_bytes()
    fails_cleanly(capsys, ["train", str(tiny_source), "--out", str(precious)], "already holds a run")
    assert (precious / "model.safetensors").read_bytes() == before


def test_an_output_directory_that_cannot_be_written(capsys, tiny_source, tmp_path):
    (tmp_path / "a-file").write_text("")
    fails_cleanly(capsys, ["train", str(tiny_source), "--out", str(tmp_path / "a-file" / "run")], "cannot write there")


def test_predict_rejects_a_file_that_is_not_an_image(capsys, tiny_source, tmp_path):
    assert main(["train", str(tiny_source), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "digit.png").write_text("not a picture")
    fails_cleanly(capsys, ["predict", str(tmp_path / "run"), str(tmp_path / "digit.png")], "digit.png: cannot use as an image: not an image Pillow can read")


def test_predict_answers_every_readable_file_in_order_and_names_the_unreadable(capsys, tiny_source, tmp_path, monkeypatch):
    from PIL import Image

    import smallvision.predictions
    import smallvision.run

    assert main(["train", str(tiny_source), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 0
    folder = tmp_path / "digits"
    folder.mkdir()
    for name in ("a", "b", "d", "e", "f"):
        Image.new("L", (28, 28), 40 * "abdef".index(name)).save(folder / f"{name}.png")
    (folder / "c.png").write_bytes(b"\x89PNG broken")
    monkeypatch.setattr(smallvision.predictions, "CHUNK", 4)  # the damaged file and the order across chunks
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(folder)]) == 2
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(line["path"]).name for line in lines] == ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png"]
    assert "error" in lines[2] and all("label" in line for i, line in enumerate(lines) if i != 2)
    assert captured.err.count("\n") == 1 and "c.png: cannot use as an image" in captured.err
    with pytest.raises(SystemExit) as exited:
        main(["predict", str(tmp_path / "run"), str(folder), "--top", "0"])
    assert exited.value.code == 2 and "--top: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SmallvisionError, match="top must be at least 1"):
        smallvision.run.load_run(tmp_path / "run").predict([folder], top=0)


def test_recipes_and_summary_print(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("seed-mnist ") for line in lines) and any(line.startswith("fast-mnist ") for line in lines)
    assert main(["summary", "mnist_convnet"]) == 0
    assert "Total params: 93,322" in capsys.readouterr().out


def test_set_takes_a_field_by_its_place_or_its_flat_name(capsys, tiny_source, tmp_path):
    from smallvision.recipe import load_recipe

    common = ["train", str(tiny_source), "--epochs", "1", "--steps-per-epoch", "2", "--quiet"]
    recipes = []
    for name, settings in (("dotted", ["augment.rotation_range=20", "augment.horizontal_flip=true", "run.seed=3"]),
                           ("flat", ["rotation_range=20", "horizontal_flip=true", "seed=3"])):
        options = [part for setting in settings for part in ("--set", setting)]
        assert main([*common, *options, "--out", str(tmp_path / name)]) == 0
        text = (tmp_path / name / "recipe.toml").read_text()
        assert "[augment]\nrotation_range = 20.0" in text and not text.startswith("rotation_range")  # grouped
        recipes.append(load_recipe(str(tmp_path / name / "recipe.toml")))
    capsys.readouterr()
    assert recipes[0] == recipes[1] and recipes[0].augment.rotation_range == 20.0 and recipes[0].augment.horizontal_flip
    assert recipes[0].run.seed == 3 and recipes[0].schedule.epochs == 1  # --epochs, a flag, beside --set
    fails_cleanly(capsys, [*common, "--set", "schedule.epochs=3", "--out", str(tmp_path / "twice")],
                  "recipe fields 'epochs' and 'schedule.epochs' are the same field, given 1 and 3")
    fails_cleanly(capsys, [*common, "--set", "augment.rotaton_range=3", "--out", str(tmp_path / "typo")],
                  "did you mean 'augment.rotation_range'")
    fails_cleanly(capsys, [*common, "--set", "augment=3", "--out", str(tmp_path / "group")],
                  "recipe field 'augment' must be a table of augment settings")
    assert not any((tmp_path / name).exists() for name in ("twice", "typo", "group"))


def test_the_console_script_end_to_end(tiny_source, tmp_path):
    """The installed `smallvision` command: train, predict (JSON lines), evaluate."""
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "smallvision", *args], capture_output=True, text=True, check=True)

    trained = cli("train", str(tiny_source), "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet")
    assert trained.stdout.strip().splitlines()[-1] == str(tmp_path / "run")
    from PIL import Image
    Image.new("L", (40, 30), 255).save(tmp_path / "blank.png")
    line = json.loads(cli("predict", str(tmp_path / "run"), str(tmp_path / "blank.png")).stdout)
    assert line["label"] in {"0", "1", "2"} and 0 <= line["probability"] <= 1
    assert "accuracy" in cli("evaluate", str(tmp_path / "run"), str(tiny_source)).stdout
    assert "example:" in cli("train", "--help").stdout


def every_command(parser, path=()):
    """(path, parser) for each command and command group below the parser."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, child in action.choices.items():
            yield (*path, name), child
            yield from every_command(child, (*path, name))


def test_every_command_and_group_has_an_example_in_its_help(capsys):
    from smallvision.cli import build_parser
    commands = dict(every_command(build_parser()))
    assert {("data",), ("data", "check"), ("augment", "preview"), ("report",)} <= set(commands)
    for path, parser in commands.items():
        assert "\nexample:\n  smallvision " in parser.format_help(), path
    assert main(["data"]) == 2  # a group without its command shows the group's help, not the top level's
    assert "data check" in capsys.readouterr().out
