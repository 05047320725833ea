import json

import pytest

from conftest import launch_chromium, playwright_or_skip

from smallvision.cli import main
from smallvision.compare import compare_runs, format_table
from smallvision.report import build_report



def test_evaluate_writes_its_files_under_the_run_not_the_source(shapes_run, shapes_folder, capsys):
    before = sorted(p.name for p in shapes_folder.iterdir())
    assert main(["evaluate", str(shapes_run.path), "--cache-dir", str(shapes_run.path.parent / "cache")]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "background_only" in out and "confusion (rows: true" in out
    directory = shapes_run.path / "eval-shapes-test"
    assert out.strip().endswith(str(directory))
    metrics = json.loads((directory / "metrics.json").read_text())
    assert metrics["images"] == 750 and metrics["accuracy"] == pytest.approx(shapes_run.metrics["test_accuracy"])
    assert sum(map(sum, metrics["confusion"])) == 750 and "top5_accuracy" not in metrics
    assert (directory / "confusion.png").stat().st_size > 5000
    rows = (directory / "predictions.csv").read_text().splitlines()
    assert rows[0] == "image,true,predicted,probability,unknown_score,p_background_only,p_blue_disk,p_red_square"
    assert len(rows) == 751
    assert sorted(p.name for p in shapes_folder.iterdir()) == before  # nothing written into the source


def test_a_report_opens_in_a_browser_with_every_picture_and_no_errors(runs_of_every_kind, tmp_path):
    playwright = playwright_or_skip()
    run = runs_of_every_kind["sigmoid"]  # an image folder run: data, curves, evaluation, mistakes, Grad-CAM
    report = build_report(run, tmp_path / "report.html", cache_dir=tmp_path / "cache")
    page_text = report.read_text()
    assert "http://" not in page_text and "https://" not in page_text  # self-contained: nothing to fetch
    with playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            for width, name in ((1280, "laptop"), (390, "phone")):
                page = browser.new_page(viewport={"width": width, "height": 900})
                problems = []
                page.on("console", lambda message, problems=problems:
                        problems.append(message.text) if message.type == "error" else None)
                page.on("pageerror", lambda error, problems=problems: problems.append(str(error)))
                page.goto(report.as_uri())
                assert problems == []
                loaded = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
                assert len(loaded) == page_text.count("<img ") >= 3 and all(loaded)  # curves, confusion, Grad-CAM
                assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing runs off the side
                shot = tmp_path / f"{name}.png"
                page.screenshot(path=str(shot), full_page=True)
                assert_not_blank(shot)
        finally:
            browser.close()


def assert_not_blank(path):
    from PIL import Image, ImageStat

    image = Image.open(path).convert("L")
    assert image.height > 1500  # the whole page, not one screen
    assert ImageStat.Stat(image).stddev[0] > 20  # text and pictures, not one colour
    assert len(image.getcolors(1 << 16) or range(1 << 16)) > 50


def test_reports_build_for_every_kind_of_run(runs_of_every_kind, tmp_path):
    for kind, run in runs_of_every_kind.items():
        text = build_report(run, tmp_path / f"{kind}.html", cache_dir=tmp_path / "cache").read_text()
        assert "Not evaluated" not in text and text.count("<img ") >= 3, kind
        assert run.recipe.name in text
        # calibration's diagram and the least known images, where the run has a scorer
        assert 'alt="reliability diagram"' in text and ('alt="least known"' in text) == (run.unknown is not None), kind
    mnist = runs_of_every_kind["mnist"]
    assert "only 3x3, so the heatmaps are coarse" in (tmp_path / "mnist.html").read_text()  # the seed's last map
    finer = build_report(mnist, tmp_path / "finer.html", layer="conv2d_1").read_text()
    assert "<b>conv2d_1</b>" in finer and "coarse" not in finer


def test_a_report_without_its_source_says_so_and_shows_the_rest(runs_of_every_kind, tmp_path):
    run = runs_of_every_kind["sigmoid"]
    text = build_report(run, tmp_path / "r.html", source=tmp_path / "gone").read_text()
    assert "Not evaluated" in text and "gone" in text and "Learning curves" in text


def test_a_run_without_a_test_split_is_reported_on_its_validation_split(tmp_path):
    from conftest import make_image_folder

    import smallvision as sv
    root = make_image_folder(tmp_path / "pets", splits=("train", "validation"), per_class=6)
    run = sv.train(root, "seed-catsdogs", out=tmp_path / "run", image_size=48, epochs=1, steps_per_epoch=1,
                   test_split=0.0, progress=False, cache_dir=tmp_path / "cache")
    assert "test_accuracy" not in run.metrics
    text = build_report(run, cache_dir=tmp_path / "cache").read_text()
    assert "Not evaluated" not in text and "On the <b>validation</b> split" in text


def test_compare_reads_runs_of_every_kind(runs_of_every_kind, capsys):
    runs = runs_of_every_kind
    rows = compare_runs([run.path for run in runs.values()])
    assert [row["model"] for row in rows] == ["mnist_convnet", "catsdogs_convnet", "small_convnet",
                                              "efficientnet_lite0", "efficientnet_lite0"]
    assert rows[0]["parameters"] == "93,322" and rows[-1]["epochs"] == "1+1"
    assert rows[0]["test accuracy"] == f"{runs['mnist'].metrics['test_accuracy']:.4f}"
    assert main(["compare", *(str(run.path) for run in runs.values()), "--md"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0].startswith("| run | recipe | model | parameters") and len(markdown) == 2 + len(runs)
    text = format_table(rows).splitlines()
    assert len({len(line) for line in text[:2]}) == 1 and "catsdogs-finetune" in text[-1]


def test_a_run_with_the_flat_recipe_toml_of_an_earlier_release_reads_as_a_grouped_one(runs_of_every_kind, tmp_path):
    """Runs written before the recipe's groups hold a flat recipe.toml: compare, the report and serve's model card
    read it through Recipe, as they read a grouped one."""
    import shutil

    import tomli_w

    import smallvision as sv
    from smallvision.recipe import FLAT
    from smallvision.serve.cards import model_card

    grouped = runs_of_every_kind["finetune"]
    recipe = grouped.recipe
    flat = {"name": recipe.name, "description": recipe.description,
            **{name: recipe.get(name) for name in FLAT if recipe.get(name) is not None}}
    earlier = tmp_path / "finetune-flat"
    shutil.copytree(grouped.path, earlier)
    (earlier / "recipe.toml").write_text(tomli_w.dumps(flat))
    assert "[fine_tune]" in (grouped.path / "recipe.toml").read_text()
    assert "fine_tune_epochs = 1" in (earlier / "recipe.toml").read_text()
    run = sv.load_run(earlier)
    assert run.recipe == recipe
    rows = compare_runs([grouped.path, earlier])
    assert {**rows[0], "run": ""} == {**rows[1], "run": ""} and rows[1]["epochs"] == "1+1"
    card = model_card(run, "earlier")
    assert card == model_card(grouped, "earlier") and card["fine_tune_epochs"] == 1
    text = build_report(run, tmp_path / "earlier.html", cache_dir=tmp_path / "cache").read_text()
    assert "1 + 1 fine-tuning" in text and "[fine_tune]" in text  # every field, shown grouped


def test_compare_draws_the_runs_validation_accuracy_by_epoch_and_by_time(runs_of_every_kind, tmp_path, capsys):
    from PIL import Image

    from smallvision.run import read_history

    runs = runs_of_every_kind
    history = read_history(runs["finetune"].path / "history.csv")
    assert [row["epoch"] for row in history] == [1.0, 2.0] and all(row["seconds"] > 0 for row in history)
    assert read_history(tmp_path / "none.csv") == []
    picture = tmp_path / "compared.png"
    assert main(["compare", *(str(run.path) for run in runs.values()), "--plot", str(picture)]) == 0
    said = capsys.readouterr().err.strip()
    validated = [name for name, run in runs.items()
                 if any(row.get("val_accuracy") is not None for row in read_history(run.path / "history.csv"))]
    assert validated and said.startswith(f"wrote {picture}")
    for name, run in runs.items():  # each run without a validated epoch is named as left out
        assert (run.path.name in said) == (name not in validated), name
    image = Image.open(picture).convert("RGB")
    assert image.size == (1100, 420) and len(image.getcolors(1 << 16) or range(1 << 16)) > 100
