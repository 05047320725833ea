"""The promises the README and docs/cli.md make, as one table: every command that reads or writes files, against
the same cases. A cell is the behaviour the docs state; a cell that does not apply says why, in the table, so
that a new command (or a new case) cannot leave the pattern unnoticed: `test_the_table_covers_every_command`.

The behaviours: a bad input gets one line on stderr and exit status 2 (`fails`); a file the user named that
exists is refused without --force and left as it was (`refused`); a folder that is not there is made
(`created`); a run's own pictures are brought up to date (`replaced`); a damaged image among good ones costs
only its own answer (`answered`, the others answered and exit 2) or is skipped with its reason (`skipped`).
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import write_idx_source
from smallvision.cli import build_parser, main

# A class name without a glyph in the font must not print matplotlib's warning (with its source path) anywhere
pytestmark = pytest.mark.filterwarnings("error:Glyph:UserWarning")

CASES = ("missing input", "existing output", "new output folder", "bad name", "damaged image")
CLASSES = ["犬", "猫", "鳥"]  # sorted, as a folder's are; beyond ASCII: JSON as the server writes it, pictures without warnings
TINY_NET = "Conv2D(4, 3, activation='relu') MaxPooling2D(2) Flatten() Dense(3, activation='softmax')"
QUICK = ["--layers", TINY_NET, "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--quiet"]


@dataclass
class World:
    """What every cell works on: made once for the module (one trained run), each cell in its own folder."""

    base: Path
    idx: Path  # digits as IDX files, classes named in classes.txt
    folder: Path  # ROOT/CLASS/*.png with the run's classes, one damaged JPEG among them
    run: Path
    keras: Path  # the run exported as a .keras file, for import-keras
    good: list[Path]
    damaged: Path
    missing: Path
    cell: Path = None  # this cell's own folder

    def existing(self, name: str) -> Path:
        """A file of the user's that a command must not replace without --force."""
        path = self.cell / name
        path.write_bytes(b"the user's own file")
        return path

    def new(self, name: str) -> Path:
        """A path inside two folders that are not there yet."""
        return self.cell / "not" / "there" / name


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    base = tmp_path_factory.mktemp("promises")
    rng = np.random.default_rng(0)
    idx = write_idx_source(base / "digits", rng.integers(0, 256, (48, 28, 28), dtype=np.uint8),
                           np.arange(48, dtype=np.uint8) % 3, rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
                           np.arange(12, dtype=np.uint8) % 3)
    (idx / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    folder = base / "photos"
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for number in range(3):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8) // (label + 1)
            Image.fromarray(pixels, "L").save(folder / name / f"{number}.png")
    damaged = folder / CLASSES[0] / "broken.jpg"
    damaged.write_bytes(b"\xff\xd8\xff\xe0 a JPEG cut short")
    run = base / "run"
    assert main(["train", str(idx), "--recipe", "seed-mnist", "--val-split", "0.25", "--out", str(run), *QUICK]) == 0
    keras = base / "run.keras"
    assert main(["export", str(run), "--format", "keras", "-o", str(keras)]) == 0
    return World(base, idx, folder, run, keras, good=sorted((folder / CLASSES[1]).glob("*.png"))[:2], damaged=damaged,
                 missing=base / "nowhere" / "gone.png")


def audit_table(world: World, action: str) -> Path:
    """A label_issues.csv for the world's folder, as an audit writes it, with `action` in its one row."""
    from smallvision.journal import write_audit_record

    relative = f"{CLASSES[0]}/0.png"
    write_audit_record(world.cell, world.folder, "folder", CLASSES, [relative])
    table = world.cell / "label_issues.csv"
    table.write_text(f"path,split,label,suggested,score,action\n{relative},train,{CLASSES[0]},{CLASSES[1]},0.9,{action}\n",
                     encoding="utf-8")
    return table


# --- the behaviours a cell can promise

Argv = Callable[[World], list]


def run_cli(capsys, argv: list) -> tuple[int, str, str]:
    try:
        status = main([str(part) for part in argv])
    except SystemExit as exited:  # argparse's own refusals
        status = exited.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str, expected: str) -> None:
    assert err.count("\n") == 1 and err.startswith("smallvision: error: ") and "Traceback" not in err, err
    assert expected in err, err


@dataclass
class Behaviour:
    check: Callable  # (world, capsys) -> None, asserting


def fails(argv: Argv, expected: str, unwritten: Callable[[World], Path] | None = None) -> Behaviour:
    """One line on stderr, exit status 2 (and, with `unwritten`, that file not written)."""
    def check(world, capsys):
        status, _, err = run_cli(capsys, argv(world))
        assert status == 2, err
        one_error_line(err, expected)
        if unwritten:
            assert not unwritten(world).exists()
    return Behaviour(check)


def parser_refuses(argv: Argv, expected: str) -> Behaviour:
    """argparse's refusal: exit status 2, its usage and the one line naming the fault."""
    def check(world, capsys):
        status, _, err = run_cli(capsys, argv(world))
        assert status == 2 and err.strip().splitlines()[-1].endswith(expected) and "Traceback" not in err, err
    return Behaviour(check)


def refused(argv: Callable[[World, Path], list], name: str) -> Behaviour:
    """A file the user named that exists: one line naming --force, exit status 2, the file as it was."""
    def check(world, capsys):
        target = world.existing(name)
        status, _, err = run_cli(capsys, argv(world, target))
        assert status == 2, err
        one_error_line(err, "--force")
        assert target.read_bytes() == b"the user's own file"
    return Behaviour(check)


def refused_directory(argv: Callable[[World, Path], list]) -> Behaviour:
    """A run directory (--out) that holds files: refused without --force, its files as they were."""
    def check(world, capsys):
        target = world.cell / "notes"
        target.mkdir()
        (target / "thesis.txt").write_text("four years of work")
        status, _, err = run_cli(capsys, argv(world, target))
        assert status == 2, err
        one_error_line(err, "--force")
        assert [path.name for path in target.iterdir()] == ["thesis.txt"]
    return Behaviour(check)


def created(argv: Callable[[World, Path], list], name: str) -> Behaviour:
    """An output inside folders that are not there: they are made, exit status 0."""
    def check(world, capsys):
        target = world.new(name)
        status, _, err = run_cli(capsys, argv(world, target))
        assert status == 0, err
        assert target.exists() and (target.is_file() or any(target.iterdir()))
    return Behaviour(check)


def replaced(argv: Callable[[World, Path], list]) -> Behaviour:
    """A folder of a command's pictures: an existing one is used, a picture of the same name brought up to date."""
    def check(world, capsys):
        folder = world.cell / "pictures"
        status, _, err = run_cli(capsys, argv(world, folder))
        assert status == 0, err
        pictures = {path: path.stat().st_mtime_ns for path in folder.iterdir()}
        for path in pictures:
            path.write_bytes(b"stale")
        status, _, err = run_cli(capsys, argv(world, folder))
        assert status == 0, err
        assert sorted(folder.iterdir()) == sorted(pictures) and all(p.read_bytes() != b"stale" for p in pictures)
    return Behaviour(check)


def answered(argv: Argv, bad: Callable[[World], Path], expected: str) -> Behaviour:
    """Image files with a bad one among them: a JSON line for each in order, the bad one with its `error`, the
    others answered; one line on stderr naming it, exit status 2."""
    def check(world, capsys):
        status, out, err = run_cli(capsys, argv(world))
        assert status == 2, err
        one_error_line(err, expected)
        lines = [json.loads(line) for line in out.splitlines()]
        assert [Path(line["path"]).name for line in lines] == [world.good[0].name, bad(world).name, world.good[1].name]
        assert expected in lines[1]["error"] and all("label" in lines[i] for i in (0, 2)), lines
    return Behaviour(check)


def skipped(argv: Argv, status_wanted: int = 0, shown: str | None = "broken.jpg") -> Behaviour:
    """A source with a damaged image: the command goes on without it (and says so where `shown`)."""
    def check(world, capsys):
        status, out, err = run_cli(capsys, argv(world))
        assert status == status_wanted, err
        assert "Traceback" not in err
        if shown:
            assert shown in out + err
    return Behaviour(check)


@dataclass
class NotApplicable:
    why: str


# --- the table: command -> case -> behaviour, or why the case does not apply

def run_arg(world):
    return world.run


TABLE: dict[str, dict[str, Behaviour | NotApplicable]] = {
    "train": {
        "missing input": fails(lambda w: ["train", w.missing.parent, "--recipe", "seed-mnist", *QUICK],
                               "no such directory"),
        "existing output": refused_directory(lambda w, out: ["train", w.idx, "--recipe", "seed-mnist", "--out", out,
                                                             *QUICK]),
        "new output folder": created(lambda w, out: ["train", w.idx, "--recipe", "seed-mnist", "--out", out, *QUICK],
                                     "run"),
        "bad name": fails(lambda w: ["train", w.idx, "--recipe", "seed-mnst", *QUICK], "did you mean 'seed-mnist'"),
        "damaged image": skipped(lambda w: ["train", w.folder, "--recipe", "seed-mnist", "--image-size", "28",
                                            "--val-split", "0", "--test-split", "0", "--out", w.cell / "run", *QUICK]),
    },
    "evaluate": {
        "missing input": fails(lambda w: ["evaluate", w.missing.parent], "no such run directory"),
        "existing output": NotApplicable("writes only inside the run, RUN/eval-SOURCE-SPLIT/, which each evaluation "
                                         "brings up to date"),
        "new output folder": NotApplicable("names no output"),
        "bad name": fails(lambda w: ["evaluate", w.run, "mnits"], "did you mean 'mnist'"),
        "damaged image": skipped(lambda w: ["evaluate", w.run, w.folder], shown=None),
    },
    "calibrate": {
        "missing input": fails(lambda w: ["calibrate", w.missing.parent], "no such run directory"),
        "existing output": NotApplicable("writes only inside the run (model.json, metrics.json, unknown.safetensors), "
                                         "each atomically and only once the whole fit succeeded"),
        "new output folder": NotApplicable("names no output"),
        "bad name": fails(lambda w: ["calibrate", w.run, "mnits"], "did you mean 'mnist'"),
        # the world's folder is too small to fit on: the damaged file is left out, then the refusal (exit 2)
        "damaged image": skipped(lambda w: ["calibrate", w.run, w.folder], status_wanted=2, shown="needs at least"),
    },
    "predict": {
        "missing input": answered(lambda w: ["predict", w.run, w.good[0], w.missing, w.good[1]], lambda w: w.missing,
                                  "no such file or directory"),
        "existing output": NotApplicable("writes no file: its answers go to stdout"),
        "new output folder": NotApplicable("writes no file: its answers go to stdout"),
        "bad name": NotApplicable("takes no names (--top is a number, checked by argparse)"),
        "damaged image": answered(lambda w: ["predict", w.run, w.good[0], w.damaged, w.good[1]], lambda w: w.damaged,
                                  "cannot use as an image"),
    },
    "explain": {
        "missing input": answered(lambda w: ["explain", w.run, w.good[0], w.missing, w.good[1], "-o", w.cell],
                                  lambda w: w.missing, "no such file or directory"),
        "existing output": replaced(lambda w, out: ["explain", w.run, w.good[0], "-o", out]),
        "new output folder": created(lambda w, out: ["explain", w.run, w.good[0], "-o", out], "pictures"),
        "bad name": fails(lambda w: ["explain", w.run, w.good[0], "--layer", "conv2d_9", "-o", w.cell / "out"],
                          "has no layer 'conv2d_9'", unwritten=lambda w: w.cell / "out"),
        "damaged image": answered(lambda w: ["explain", w.run, w.good[0], w.damaged, w.good[1], "-o", w.cell],
                                  lambda w: w.damaged, "cannot use as an image"),
    },
    "activations": {
        "missing input": fails(lambda w: ["activations", w.run, w.missing], "no such file or directory"),
        "existing output": replaced(lambda w, out: ["activations", w.run, w.good[0], "-o", out]),
        "new output folder": created(lambda w, out: ["activations", w.run, w.good[0], "-o", out], "pictures"),
        "bad name": fails(lambda w: ["activations", w.run, w.good[0], "--layers", "conv2d_9", "-o", w.cell / "out"],
                          "has no layer 'conv2d_9'", unwritten=lambda w: w.cell / "out"),
        "damaged image": fails(lambda w: ["activations", w.run, w.damaged], "cannot use as an image"),  # its one image
    },
    "filters": {
        "missing input": fails(lambda w: ["filters", w.missing.parent, "--layer", "conv2d"], "no such run directory"),
        "existing output": refused(lambda w, out: ["filters", w.run, "--layer", "conv2d", "--steps", "2", "-o", out],
                                   "filters.png"),
        "new output folder": created(lambda w, out: ["filters", w.run, "--layer", "conv2d", "--count", "2", "--steps",
                                                     "2", "-o", out], "filters.png"),
        "bad name": fails(lambda w: ["filters", w.run, "--layer", "conv2d_9", "-o", w.cell / "f.png"],
                          "has no layer 'conv2d_9'", unwritten=lambda w: w.cell / "f.png"),
        "damaged image": NotApplicable("reads no image: it starts from noise"),
    },
    "report": {
        "missing input": fails(lambda w: ["report", w.missing.parent], "no such run directory"),
        "existing output": refused(lambda w, out: ["report", w.run, "-o", out], "report.html"),
        "new output folder": created(lambda w, out: ["report", w.run, "--samples", "0", "-o", out], "report.html"),
        "bad name": fails(lambda w: ["report", w.run, "--layer", "conv2d_9", "-o", w.cell / "r.html"],
                          "has no layer 'conv2d_9'", unwritten=lambda w: w.cell / "r.html"),
        "damaged image": skipped(lambda w: ["report", w.run, w.folder, "--samples", "0", "-o", w.cell / "r.html"],
                                 shown=None),
    },
    "compare": {
        "missing input": fails(lambda w: ["compare", w.run, w.missing.parent], "no such run directory"),
        "existing output": refused(lambda w, out: ["compare", w.run, "--plot", out], "curves.png"),
        "new output folder": created(lambda w, out: ["compare", w.run, "--plot", out], "curves.png"),
        "bad name": NotApplicable("takes run directories only: a misspelt one is a missing input"),
        "damaged image": NotApplicable("reads no image"),
    },
    "export keras": {
        "missing input": fails(lambda w: ["export", w.missing.parent, "-o", w.cell / "m.keras"], "no such run directory"),
        "existing output": refused(lambda w, out: ["export", w.run, "--format", "keras", "-o", out], "m.keras"),
        "new output folder": created(lambda w, out: ["export", w.run, "--format", "keras", "-o", out], "m.keras"),
        "bad name": parser_refuses(lambda w: ["export", w.run, "--format", "kears"], "invalid choice: 'kears' "
                                   "(choose from 'keras', 'onnx')"),
        "damaged image": NotApplicable("reads no image"),
    },
    "export onnx": {
        "missing input": fails(lambda w: ["export", w.missing.parent, "--format", "onnx", "-o", w.cell / "m.onnx"],
                               "no such run directory"),
        "existing output": refused(lambda w, out: ["export", w.run, "--format", "onnx", "-o", out], "m.onnx"),
        "new output folder": created(lambda w, out: ["export", w.run, "--format", "onnx", "-o", out], "m.onnx"),
        "bad name": NotApplicable("--format is the one name, and `export keras` holds argparse's refusal of it"),
        "damaged image": NotApplicable("reads no image it is given (its check uses the run's own test split)"),
    },
    "import-keras": {
        "missing input": fails(lambda w: ["import-keras", w.missing.with_suffix(".h5")], "no such file"),
        "existing output": refused_directory(lambda w, out: ["import-keras", w.keras, "--out", out]),
        "new output folder": created(lambda w, out: ["import-keras", w.keras, "--out", out], "run"),
        "bad name": fails(lambda w: ["import-keras", w.keras, "--source", "mnits", "--out", w.cell / "run"],
                          "did you mean 'mnist'", unwritten=lambda w: w.cell / "run"),
        "damaged image": NotApplicable("reads a Keras file, no image (tests/test_fuzz.py feeds it damaged ones)"),
    },
    "data check": {
        "missing input": fails(lambda w: ["data", "check", w.missing.parent], "no such directory"),
        "existing output": refused(lambda w, out: ["data", "check", w.folder, "--samples", out], "samples.png"),
        "new output folder": created(lambda w, out: ["data", "check", w.folder, "--recipe", "seed-mnist",
                                                     "--image-size", "28", "--samples", out], "samples.png"),
        "bad name": fails(lambda w: ["data", "check", w.folder, "--recipe", "seed-catsdog"],
                          "did you mean 'seed-catsdogs'"),
        "damaged image": skipped(lambda w: ["data", "check", w.folder, "--recipe", "seed-mnist", "--image-size", "28"]),
    },
    "data audit": {
        "missing input": fails(lambda w: ["data", "audit", w.missing.parent, "--out", w.cell / "audit"],
                               "no such directory", unwritten=lambda w: w.cell / "audit"),
        "existing output": replaced(lambda w, out: ["data", "audit", w.folder, "--out", out]),
        "new output folder": created(lambda w, out: ["data", "audit", w.folder, "--out", out], "audit"),
        "bad name": fails(lambda w: ["data", "audit", w.folder, "--recipe", "catsdogs-featurs", "--out",
                                     w.cell / "audit"], "did you mean 'catsdogs-features'",
                          unwritten=lambda w: w.cell / "audit"),
        "damaged image": skipped(lambda w: ["data", "audit", w.folder, "--out", w.cell / "audit"]),
    },
    "data apply": {
        "missing input": fails(lambda w: ["data", "apply", w.missing.parent / "label_issues.csv"], "no such file"),
        "existing output": NotApplicable("names no output: it moves files inside the audited source, each through "
                                         "the source's journal, and never over another file (tests/test_journal.py)"),
        "new output folder": NotApplicable("names no output folder: a relabel makes the class folder it needs inside "
                                           "the source, and undo removes it"),
        "bad name": fails(lambda w: ["data", "apply", audit_table(w, "relable")], "did you mean 'relabel'"),
        "damaged image": NotApplicable("decodes no image: each file is checked against its size, time and SHA-1 "
                                       "at the audit, and a changed one refused (tests/test_journal.py)"),
    },
    "data undo": {
        "missing input": fails(lambda w: ["data", "undo", w.missing.parent], "no such directory"),
        "existing output": NotApplicable("names no output: it puts files back where the journal says they were, "
                                         "never over another file"),
        "new output folder": NotApplicable("names no output folder"),
        "bad name": NotApplicable("takes a folder and no name"),
        "damaged image": NotApplicable("decodes no image: each file is checked against the journal's SHA-1"),
    },
    "augment preview": {
        "missing input": fails(lambda w: ["augment", "preview", w.missing.parent, "-o", w.cell / "p.png"],
                               "no such directory", unwritten=lambda w: w.cell / "p.png"),
        "existing output": refused(lambda w, out: ["augment", "preview", w.folder, "--recipe", "seed-catsdogs-augment",
                                                   "-o", out], "preview.png"),
        "new output folder": created(lambda w, out: ["augment", "preview", w.folder, "--recipe", "seed-catsdogs-augment",
                                                     "--count", "2", "-o", out], "preview.png"),
        "bad name": fails(lambda w: ["augment", "preview", w.folder, "--recipe", "seed-catsdogs-augmnt", "-o",
                                     w.cell / "p.png"], "did you mean 'seed-catsdogs-augment'",
                          unwritten=lambda w: w.cell / "p.png"),
        "damaged image": skipped(lambda w: ["augment", "preview", w.folder, "--recipe", "catsdogs", "--index", "0",
                                            "--count", "2", "-o", w.cell / "p.png"], shown=None),
    },
    "summary": {
        "missing input": fails(lambda w: ["summary", w.base / "rnu"], "did you mean"),
        "existing output": NotApplicable("writes no file: the table goes to stdout"),
        "new output folder": NotApplicable("writes no file: the table goes to stdout"),
        "bad name": fails(lambda w: ["summary", "seed-mnst"], "did you mean 'seed-mnist'"),
        "damaged image": NotApplicable("reads no image"),
    },
    "serve": {
        "missing input": fails(lambda w: ["serve", w.run, w.missing.parent], "no such run directory"),
        "existing output": NotApplicable("writes no file"),
        "new output folder": NotApplicable("writes no file"),
        "bad name": NotApplicable("names come with requests: a 404 naming the nearest served ones (test_serve.py)"),
        "damaged image": NotApplicable("images come with requests: a 400 for a damaged upload (test_serve.py)"),
    },
    "studio": {
        "missing input": fails(lambda w: ["studio", w.missing.parent, "--port", "0"], "no such directory"),
        "existing output": NotApplicable("each training gets a folder of its own name in --runs; a name that exists "
                                         "is refused with 409 (test_studio.py)"),
        "new output folder": NotApplicable("--runs is made if missing; the page's paths are checked per request "
                                           "(test_studio.py)"),
        "bad name": NotApplicable("names come with requests: a misspelt recipe is a 400 naming the nearest ones"),
        "damaged image": NotApplicable("a damaged photo's thumbnail is a 422 naming the file; a training skips it "
                                       "as `train` does"),
    },
}
# Commands that read and write no file of the user's: nothing in the table applies to them.
NO_FILES = {"recipes": "prints the built-in recipes (--show NAME: a misspelt name is refused as any unknown name)"}


def applicable():
    return [pytest.param(command, case, id=f"{command}: {case}") for command, row in TABLE.items()
            for case, cell in row.items() if isinstance(cell, Behaviour)]


@pytest.mark.parametrize("command, case", applicable())
def test_the_promise_is_kept(command, case, world, capsys, tmp_path, monkeypatch):
    if command == "serve":  # the heap arenas are the served process's, not the test's
        monkeypatch.setattr("smallvision.heap.limit_arenas", lambda: None)
    world.cell = tmp_path
    TABLE[command][case].check(world, capsys)


def test_the_table_covers_every_command():
    """Every command is in the table (or reads and writes no file), with a behaviour or a reason for every case."""
    commands = set()
    for action in build_parser()._subparsers._group_actions:
        for name, parser in action.choices.items():
            subcommands = parser._subparsers._group_actions[0].choices if parser._subparsers else {name: None}
            commands |= {name if sub == name else f"{name} {sub}" for sub in subcommands}
    table_commands = {"export" if name.startswith("export ") else name for name in TABLE}
    assert commands == table_commands | set(NO_FILES)
    for command, row in TABLE.items():
        assert tuple(row) == CASES, command
        for case, cell in row.items():
            assert isinstance(cell, Behaviour) or (isinstance(cell, NotApplicable) and cell.why), (command, case)


# --- the defects of issue 28, each as the command now behaves

def test_export_refuses_to_replace_a_file_without_force(world, capsys, tmp_path):
    out = tmp_path / "m.keras"
    assert main(["export", str(world.run), "-o", str(out)]) == 0
    before = out.read_bytes()
    status, _, err = run_cli(capsys, ["export", world.run, "-o", out])
    assert status == 2 and "already exists" in err and out.read_bytes() == before
    out.write_bytes(b"old")
    assert main(["export", str(world.run), "-o", str(out), "--force"]) == 0
    assert out.read_bytes()[:2] == before[:2] == b"PK"  # a Keras archive again


def test_image_size_on_digits_is_refused_and_nothing_is_recorded(world, capsys, tmp_path):
    out = tmp_path / "run"
    status, _, err = run_cli(capsys, ["train", world.idx, "--recipe", "seed-mnist", "--image-size", "64", "--out", out,
                                      *QUICK])
    assert status == 2
    one_error_line(err, "image_size 64: ")
    assert "28x28 images from IDX files" in err and not out.exists()


def test_a_nan_without_a_checkpoint_says_nothing_was_kept(world, capsys, tmp_path, monkeypatch):
    import smallvision.step

    original = smallvision.step.cross_entropy
    monkeypatch.setattr(smallvision.step, "cross_entropy", lambda *a, **k: original(*a, **k) * float("nan"))
    out = tmp_path / "run"
    status, _, err = run_cli(capsys, ["train", world.idx, "--recipe", "seed-mnist", "--lr", "1e6", "--out", out, *QUICK])
    assert status == 2
    one_error_line(err, "no checkpoint had been written yet, so nothing was kept")
    assert "--lr 100000" in err and "if any" not in err and not out.exists()


def test_compare_plots_nothing_for_runs_without_a_validated_epoch(world, capsys, tmp_path):
    imported = tmp_path / "imported"
    assert main(["import-keras", str(world.keras), "--out", str(imported)]) == 0
    capsys.readouterr()
    status, out, err = run_cli(capsys, ["compare", imported, "--plot", tmp_path / "curves.png"])
    assert status == 2 and out == ""
    one_error_line(err, "no run here has a validated epoch")
    assert not (tmp_path / "curves.png").exists()


def test_compare_counts_feature_extraction_in_its_table_and_its_plot(world, tmp_path):
    """A frozen backbone's features_seconds: in the training time column and at the start of the plot's time axis."""
    from smallvision import compare, plots

    run = tmp_path / "features"
    run.mkdir()
    (run / "history.csv").write_text("epoch,seconds,val_accuracy\n1,0.1,0.5\n2,0.05,0.75\n")
    (run / "metrics.json").write_text(json.dumps({"train_seconds": 0.15, "features_seconds": 66.75}))
    drawn = {}
    original = plots.plot_comparison

    def keep(histories, path, title=""):
        drawn["histories"] = histories
        original(histories, path, title)

    plots.plot_comparison = keep
    try:
        compare.plot_runs([run], tmp_path / "curves.png")
    finally:
        plots.plot_comparison = original
    (name, history, before), = drawn["histories"]
    assert before == 66.75 and sum(row["seconds"] for row in history) + before == pytest.approx(66.9)


def test_summary_suggests_models_recipes_and_runs_together(world, capsys):
    status, _, err = run_cli(capsys, ["summary", "catsdogs-finetun"])
    assert status == 2
    one_error_line(err, "did you mean 'catsdogs-finetune'")
    status, _, err = run_cli(capsys, ["summary", world.base / "rnu"])
    one_error_line(err, f"did you mean '{world.run}'")


def test_data_check_says_a_folder_that_cannot_be_trained_on_exits_1(world, capsys, tmp_path):
    for split in ("train", "validation"):
        for name in (CLASSES if split == "train" else CLASSES[:2]):
            (tmp_path / split / name).mkdir(parents=True)
            for number in range(2):
                Image.new("L", (8, 8), 60 * number).save(tmp_path / split / name / f"{number}.png")
    status, out, err = run_cli(capsys, ["data", "check", tmp_path])
    assert status == 1 and err == ""
    assert "cannot train: " in out and "missing ['鳥']" in out


def test_augment_preview_defaults_to_the_recipe_train_would_use(world, capsys, tmp_path):
    status, _, err = run_cli(capsys, ["augment", "preview", world.idx, "-o", tmp_path / "p.png"])
    assert status == 2
    one_error_line(err, f"recipe 'seed-mnist' (the one `train {world.idx}` uses without --recipe) has no augmentation")
    assert not (tmp_path / "p.png").exists()
    assert "default: the recipe `train` uses" in " ".join(build_parser()._subparsers._group_actions[0].choices[
        "augment"]._subparsers._group_actions[0].choices["preview"].format_help().split())


def test_evaluate_scores_an_imported_run_on_its_import_source(world, capsys, tmp_path):
    imported = tmp_path / "imported"
    assert main(["import-keras", str(world.keras), "--source", str(world.idx), "--out", str(imported)]) == 0
    capsys.readouterr()
    status, out, err = run_cli(capsys, ["evaluate", imported])
    assert status == 0, err
    assert out.startswith(f"{world.idx} test: accuracy ")
    bare = tmp_path / "bare"
    assert main(["import-keras", str(world.keras), "--out", str(bare)]) == 0
    capsys.readouterr()
    status, _, err = run_cli(capsys, ["evaluate", bare])
    assert status == 2
    one_error_line(err, "without --source, so it knows no source to score on; name one")


def test_json_lines_are_utf8_as_the_server_writes_them(world, capsys):
    status, out, _ = run_cli(capsys, ["predict", world.run, world.good[0]])
    assert status == 0 and "\\u" not in out
    assert json.loads(out)["label"] in CLASSES and json.loads(out)["label"] in out


def test_pictures_of_names_beyond_ascii_print_no_warnings(world, capfd, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["explain", str(world.run), str(world.good[0]), "-o", str(tmp_path), "--class", CLASSES[2]]) == 0
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert "Glyph" not in capfd.readouterr().err


def test_train_prints_its_figures_each_in_one_format(capsys, monkeypatch, tmp_path):
    import smallvision.workflow

    class Finished:
        metrics = {"test_accuracy": 1.0, "val_accuracy": 0.5, "train_seconds": 12.0, "images_per_second": 1234.5}
        path = tmp_path / "run"

    monkeypatch.setattr(smallvision.workflow, "train", lambda *args, **kwargs: Finished())
    assert main(["train", "mnist", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("test_accuracy 1.0000  val_accuracy 0.5000  train_seconds 12.00  "
                                                       "images_per_second 1,234.5")
