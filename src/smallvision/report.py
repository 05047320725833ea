"""`report`: one self-contained HTML page about a run (pictures embedded as data URLs, no script, nothing
fetched), readable at laptop and phone widths: recipe, data, curves, evaluation, mistakes, Grad-CAM, timings."""

import base64
import csv
import html
import io
import json
import time
from pathlib import Path

import torch

from smallvision.errors import SmallvisionError
from smallvision.evaluation import Evaluation, evaluate_run, mistake_titles
from smallvision.explain import run_heatmaps
from smallvision.models.summary import count_parameters
from smallvision.files import write_atomically
from smallvision.taps import check_layers, map_shapes

STYLE = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --accent: #2457c5; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1080px; padding: 16px; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--ink); background: #fff; }
h1 { font-size: 1.5rem; margin: 0.2rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.6rem; padding-bottom: 0.2rem; border-bottom: 1px solid var(--line); }
p.muted, .muted { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 1rem 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.card .value { font-size: 1.25rem; font-weight: 600; overflow-wrap: anywhere; }
.card .label { color: var(--muted); font-size: 0.85rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.4rem 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
summary { cursor: pointer; color: var(--accent); }
pre { background: #f5f7fa; border: 1px solid var(--line); border-radius: 6px; padding: 10px; overflow-x: auto;
      font-size: 0.85rem; }
img { display: block; max-width: 100%; height: auto; margin: 0.5rem 0; border: 1px solid var(--line); border-radius: 4px; }
@media (max-width: 600px) { body { padding: 10px; font-size: 14px; } h1 { font-size: 1.25rem; } }
"""


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def picture(png: bytes, alt: str) -> str:
    return f'<img src="{data_url(png)}" alt="{html.escape(alt)}">'


def rendered(draw) -> bytes:
    """The PNG that `draw(file)` writes, kept in memory."""
    buffer = io.BytesIO()
    draw(buffer)
    return buffer.getvalue()


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="value">{html.escape(value)}</div><div class="label">{html.escape(label)}</div></div>'
        for label, value in items) + "</div>"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def data_section(run, summary: dict) -> str:
    """The run's data.json (`summary`) as a table of counts, with its warnings and skipped files."""
    if not summary:
        return "<p class=muted>This run has no data.json (it was trained before smallvision wrote one).</p>"
    counts = summary.get("counts", {})
    splits = list(counts)
    rows = [[name, *(counts[split].get(name, 0) for split in splits)] for name in summary.get("class_names", [])]
    rows.append(["all classes", *(sum(counts[split].values()) for split in splits)])
    parts = [f"<p>Source <b>{html.escape(str(summary.get('source')))}</b>"
             + (f" ({html.escape(summary['layout'])})" if summary.get("layout") else "") + ".</p>",
             table(["class", *splits], rows)]
    for warning in summary.get("warnings", []):
        parts.append(f"<p>⚠ {html.escape(warning)}</p>")
    skipped = read_skipped(run.path / "skipped.csv")
    if skipped:
        shown = skipped[:50]
        parts.append(f"<p>{len(skipped):,} file(s) were skipped"
                     + (f"; the first {len(shown)} are listed (all are in skipped.csv)" if len(skipped) > 50 else "")
                     + ":</p>")
        parts.append(table(["file", "reason"], shown))
    else:
        parts.append("<p class=muted>No file was skipped.</p>")
    return "\n".join(parts)


def read_skipped(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [row for row in csv.reader(handle)][1:]


def evaluation_section(evaluation: Evaluation) -> str:
    metrics = evaluation.metrics
    overview = [("accuracy", f"{metrics['accuracy']:.4f}")]
    if "balanced_accuracy" in metrics:  # the mean per-class recall: what accuracy hides when a class is rare
        overview.append(("balanced accuracy", f"{metrics['balanced_accuracy']:.4f}"))
    overview += [("log loss", f"{metrics['loss']:.4f}"), ("images", f"{metrics['images']:,}")]
    if "ece" in metrics:  # an evaluation written before it had none
        overview.append(("calibration error (ECE)", f"{metrics['ece']:.4f}"))
    if "unknown_rate" in metrics:  # a run with an unknown scorer
        overview.append(("called unknown", f"{metrics['unknown_rate']:.1%}"))
    if metrics.get("roc_auc") is not None:
        overview.append(("ROC AUC", f"{metrics['roc_auc']:.4f}"))
    if "top5_accuracy" in metrics:
        overview.append(("top-5 accuracy", f"{metrics['top5_accuracy']:.4f}"))
    rows = [[name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", row["support"]]
            for name, row in metrics["per_class"].items()]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        row = metrics[key]
        rows.append([label, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", metrics["images"]])
    parts = [f"<p>On the <b>{html.escape(metrics['split'])}</b> split of {html.escape(metrics['source'])}.</p>",
             cards(overview), table(["class", "precision", "recall", "F1", "support"], rows)]
    confusion = evaluation.directory / "confusion.png"
    parts.append(picture(confusion.read_bytes(), "confusion matrix"))
    reliability = evaluation.directory / "calibration.png"
    if reliability.is_file():
        parts.append("<p>Whether a probability means what it says: each bin of the top probability against how "
                     "often it was right (on the diagonal: calibrated; below it: over-confident).</p>"
                     + picture(reliability.read_bytes(), "reliability diagram"))
    return "\n".join(parts)


def unknown_section(evaluation: Evaluation) -> str:
    sheet = evaluation.directory / "unknown.png"
    if not sheet.is_file():
        return ("<p class=muted>This run has no unknown scorer (an import, or a run from before them): "
                "<code>smallvision calibrate RUN SOURCE</code> fits one.</p>")
    return (f"<p>The images least like the training images, by their unknown score; past "
            f"{evaluation.metrics['unknown_threshold']:.3f} the run answers \"none of these\" "
            f"({evaluation.metrics['unknown_rate']:.1%} of this split).</p>" + picture(sheet.read_bytes(), "least known"))


def mistakes_section(evaluation: Evaluation) -> str:
    gallery = evaluation.directory / "mistakes.png"
    if not gallery.is_file():
        return "<p>No mistakes on this split.</p>"
    return ("<p>The images the model got wrong with the most confidence: often a wrong label in the data, "
            "or a kind of image the training set lacks.</p>" + picture(gallery.read_bytes(), "most confident mistakes"))


def gradcam_section(run, evaluation: Evaluation, samples: int, layer: str | None = None) -> str:
    """Heatmaps for the most confident mistakes (up to half the sample) and, for the rest, a seeded random
    choice of the other images."""
    from smallvision.plots import plot_image_grid  # matplotlib is slow to import

    mistakes = evaluation.mistakes(samples // 2)
    others = [i for i in torch.randperm(len(evaluation.data), generator=torch.Generator().manual_seed(0)).tolist()
              if i not in set(mistakes)][:samples - len(mistakes)]
    chosen = mistakes + others
    if not chosen:
        return "<p class=muted>No images to explain.</p>"
    images = evaluation.data.take(torch.tensor(chosen, dtype=torch.long))
    predicted = evaluation.probabilities[chosen].argmax(1)  # the evaluation has them: no second forward pass
    heatmaps, _, layer = run_heatmaps(run, images, predicted, layer)
    titles = [title.replace("\n", " · ") for title in mistake_titles(evaluation, chosen)]
    png = rendered(lambda f: plot_image_grid(images, titles, f, columns=4, heatmaps=heatmaps))
    _, height, width = map_shapes(run.model)[layer]
    coarse = (f" This layer's map is only {height}x{width}, so the heatmaps are coarse: <code>smallvision report "
              f"RUN --layer L</code> takes an earlier layer." if max(height, width) <= 4 else "")
    return (f"<p>Where the evidence for the predicted class lies (red: most), at layer <b>{html.escape(layer)}</b>; "
            f"the first {len(mistakes)} are mistakes.{coarse}</p>" + picture(png, "Grad-CAM heatmaps"))


def timings_section(run, evaluation_seconds: float | None) -> str:
    metrics = run.metrics
    rows = [["training", format_seconds(metrics.get("train_seconds"))],
            ["loading the data", format_seconds(metrics.get("load_seconds"))],
            *([["a frozen backbone's features", format_seconds(metrics["features_seconds"])]]
              if "features_seconds" in metrics else []),
            ["training speed", f"{metrics['images_per_second']:,.0f} images/s" if "images_per_second" in metrics else "—"],
            ["evaluation for this report", format_seconds(evaluation_seconds)]]
    machine = [f"{key} {metrics[key]}" for key in ("device", "torch", "threads", "machine", "finished") if key in metrics]
    return table(["what", "time"], rows) + (f"<p class=muted>{html.escape(', '.join(machine))}</p>" if machine else "")


def build_report(run, out: str | Path | None = None, source: str | Path | None = None, split: str | None = None,
                 data_dir: str | Path | None = None, cache_dir: str | Path | None = None, samples: int = 8,
                 layer: str | None = None, progress: bool = False) -> Path:
    """Write the run's report (default RUN/report.html) and return its path. The evaluation is made fresh
    (and written under RUN/eval-SOURCE-SPLIT/); when the source cannot be read, the report says why and
    shows everything else. A layer the run does not have is refused before anything is evaluated or written."""
    if layer:
        check_layers(run.model, [layer])
    metrics = run.metrics
    data_summary = read_json(run.path / "data.json")
    trained_splits = data_summary.get("counts", {})
    if source is None and split in (None, "test") and trained_splits and "test" not in trained_splits \
            and "validation" in trained_splits:
        split = "validation"  # a run without a test split is still shown on images it never trained on
    started = time.perf_counter()
    try:
        evaluation = evaluate_run(run, source, split, data_dir, cache_dir, progress=progress)
        evaluation_seconds = time.perf_counter() - started
        evaluated = evaluation_section(evaluation)
        mistakes = mistakes_section(evaluation)
        unknown = unknown_section(evaluation)
        gradcam = gradcam_section(run, evaluation, samples, layer)
    except SmallvisionError as err:
        evaluation_seconds = None
        evaluated = mistakes = unknown = gradcam = f"<p>⚠ Not evaluated: {html.escape(str(err))}</p>"
    tuned = run.recipe.fine_tune.epochs
    epochs = str(run.recipe.schedule.epochs) + (f" + {tuned} fine-tuning" if tuned else "")
    overview = [("model", run.meta.architecture.model), ("recipe", run.recipe.name),
                ("test accuracy", f"{metrics['test_accuracy']:.4f}" if "test_accuracy" in metrics else "—"),
                *([("test balanced accuracy", f"{metrics['test_balanced_accuracy']:.4f}")]
                  if "test_balanced_accuracy" in metrics else []),
                ("validation accuracy", f"{metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else "—"),
                ("epochs", epochs), ("training time", format_seconds(metrics.get("train_seconds"))),
                ("parameters", f"{count_parameters(run.model):,}"), ("classes", f"{len(run.class_names):,}")]
    curves = run.path / "curves.png"
    sections = [
        ("Recipe", f"<p>{html.escape(run.recipe.description or run.recipe.one_line())}</p>"
                   f"<details><summary>every field (recipe.toml)</summary><pre>{html.escape(run.recipe.to_toml())}</pre>"
                   f"</details>"),
        ("Data", data_section(run, data_summary)),
        ("Learning curves", picture(curves.read_bytes(), "learning curves") if curves.is_file()
         else "<p class=muted>No curves.png in this run.</p>"),
        ("Evaluation", evaluated),
        ("Most confident mistakes", mistakes),
        ("Least known images", unknown),
        ("Grad-CAM", gradcam),
        ("Timings", timings_section(run, evaluation_seconds)),
    ]
    body = "\n".join(f'<section><h2 id="{title.lower().replace(" ", "-")}">{title}</h2>\n{content}</section>'
                     for title, content in sections)
    page = (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f'<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(run.path.name)} · smallvision report</title><style>{STYLE}</style></head>\n"
            f"<body><header><p class=muted>smallvision report</p><h1>{html.escape(run.path.name)}</h1>"
            f"<p class=muted>trained on {html.escape(run.meta.source)}</p>{cards(overview)}</header>\n"
            f"{body}\n</body></html>\n")
    out = Path(out) if out else run.path / "report.html"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, lambda p: p.write_text(page, encoding="utf-8"))
    except OSError as err:
        raise SmallvisionError(f"{out}: cannot write the report there ({err.strerror or err})") from None
    return out
