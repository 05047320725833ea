"""An audit's pictures: a contact sheet (PNG) per finding for the terminal user, and audit.html, one
self-contained page (thumbnails as data URLs, nothing fetched) with a section per finding, each row a
thumbnail with its path, label and suggestion."""

import base64
import html
import io

import torch

from smallvision.files import write_atomically

SHEET_CELLS = 48  # images on a contact sheet: the first rows of the finding, as the CSV orders them
PAGE_ROWS = 200  # rows of a finding on the page (the CSV has them all)
THUMBNAIL = 112  # pixels, the longer side

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1rem 1.5rem; color: #222 }
h1 { font-size: 1.5rem } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem }
.muted { color: #666 } table { border-collapse: collapse; width: 100% } td, th { padding: .3rem .5rem;
  border-bottom: 1px solid #eee; text-align: left; vertical-align: middle } img { border-radius: 3px; display: block }
.group { display: flex; flex-wrap: wrap; gap: .6rem; padding: .6rem 0; border-bottom: 1px solid #eee }
.group figure { margin: 0; width: 130px; font-size: 12px; word-break: break-all } .leak { color: #b00020; font-weight: 600 }
code { font-size: 13px }
"""


def image_of(result, index: int) -> torch.Tensor:
    """The decoded image [C, H, W] of the catalogue's `index`."""
    catalogue = result.catalogue
    images = result.source.split(catalogue.splits[index])
    return images.take(torch.tensor([catalogue.positions[index]]))[0]


def thumbnail_url(image: torch.Tensor) -> str:
    """A small JPEG of the image as a data URL."""
    from PIL import Image

    pixels = image.permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_pictures(result) -> None:
    """label_issues.png, near_duplicates.png, outliers.png: the first images of each finding with captions
    (a finding with nothing in it draws no sheet, and an old sheet of it is removed)."""
    from smallvision.plots import plot_image_grid  # matplotlib: only when drawing

    catalogue, names, finding = result.catalogue, result.source.class_names, result.finding
    sheets = {
        "label_issues.png": ([i for i, _, _ in finding.label_issues[:SHEET_CELLS]],
                             [f"{short(named(result, i))}\n{names[catalogue.labels[i]]} → {names[s]} ({score:.2f})"
                              for i, s, score in finding.label_issues[:SHEET_CELLS]],
                             "label issues: folder → suggested (score)"),
        "near_duplicates.png": duplicate_cells(result),
        "outliers.png": ([i for i, _ in finding.outliers[:SHEET_CELLS]],
                         [f"{short(named(result, i))}\n{names[catalogue.labels[i]]} ({score:.2f})"
                          for i, score in finding.outliers[:SHEET_CELLS]], "outliers: label (distance)"),
    }
    for file, (indices, captions, title) in sheets.items():
        path = result.directory / file
        real = [i for i in indices if i is not None]
        if not real:
            path.unlink(missing_ok=True)
            continue
        cells = [None if i is None else image_of(result, i) for i in indices]
        write_atomically(path, lambda target, c=cells, t=captions, h=title:
                         plot_image_grid(c, t, target, title=f"{result.source.root or result.source.name}: {h}", columns=6))


def duplicate_cells(result) -> tuple[list, list[str], str]:
    """The near-duplicate groups a row each (six to a row at most), leaks marked."""
    catalogue = result.catalogue
    indices, captions = [], []
    for number, group in enumerate(result.finding.duplicate_groups, 1):
        if len(indices) >= SHEET_CELLS:
            break
        leak = len({catalogue.splits[i] for i, _ in group}) > 1
        members = group[:6]
        indices += [i for i, _ in members] + [None] * (6 - len(members))
        captions += [f"{'LEAK ' if leak else ''}group {number}\n{short(named(result, i))}"
                     for i, _ in members] + [""] * (6 - len(members))
    return indices, captions, "near-duplicates, a group a row (LEAK: across splits)"


def named(result, index: int) -> str:
    """A file's path (which names its split), or an IDX image's split and index."""
    catalogue = result.catalogue
    return catalogue.names[index] if result.source.root else f"{catalogue.splits[index]}/{catalogue.names[index]}"


def short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def write_page(result) -> None:
    catalogue, names, finding = result.catalogue, result.source.class_names, result.finding
    where = html.escape(str(result.source.root or result.source.name))
    issues = "".join(
        f"<tr><td><img src='{thumbnail_url(image_of(result, i))}' alt=''></td><td><code>{html.escape(catalogue.names[i])}</code>"
        f"<br><span class=muted>{catalogue.splits[i]}</span></td><td>{html.escape(names[catalogue.labels[i]])}</td>"
        f"<td><b>{html.escape(names[s])}</b></td><td>{score:.3f}</td></tr>"
        for i, s, score in finding.label_issues[:PAGE_ROWS])
    groups = []
    for number, group in enumerate(finding.duplicate_groups[:PAGE_ROWS], 1):
        leak = len({catalogue.splits[i] for i, _ in group}) > 1
        figures = "".join(f"<figure><img src='{thumbnail_url(image_of(result, i))}' alt=''><figcaption>"
                          f"{catalogue.splits[i]}: <code>{html.escape(catalogue.names[i])}</code> ({similarity:.3f})"
                          f"</figcaption></figure>" for i, similarity in group[:12])
        more = f"<p class=muted>and {len(group) - 12} more</p>" if len(group) > 12 else ""
        groups.append(f"<div class=group><p><b>group {number}</b>{' <span class=leak>across splits</span>' if leak else ''}"
                      f"</p>{figures}{more}</div>")
    far = "".join(
        f"<tr><td><img src='{thumbnail_url(image_of(result, i))}' alt=''></td><td><code>{html.escape(catalogue.names[i])}</code>"
        f"<br><span class=muted>{catalogue.splits[i]}</span></td><td>{html.escape(names[catalogue.labels[i]])}</td>"
        f"<td>{score:.3f}</td></tr>" for i, score in finding.outliers[:PAGE_ROWS])

    def section(title: str, count: int, csv_name: str, explanation: str, body: str) -> str:
        shown = f" (the first {PAGE_ROWS} here)" if count > PAGE_ROWS else ""
        content = body if count else "<p>None found.</p>"
        return (f"<section><h2>{title}: {count:,}</h2><p class=muted>{explanation} All of them in "
                f"<code>{csv_name}</code>{shown}.</p>{content}</section>")

    header = "<tr><th></th><th>file</th><th>folder</th><th>{}</th><th>score</th></tr>"
    page = (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>audit of {where}</title>"
            f"<style>{STYLE}</style></head><body><p class=muted>smallvision data audit</p><h1>{where}</h1>"
            f"<p>{len(catalogue.names):,} images, {len(names)} classes; {html.escape(result.how)}. Fill the "
            f"<code>action</code> column of a CSV (relabel, remove, keep) and run <code>smallvision data apply "
            f"FILE.csv</code>; <code>smallvision data undo</code> puts every file back.</p>"
            + section("Labels that look wrong", len(finding.label_issues), "label_issues.csv",
                      "Each image scored by models that never saw it; the score is 1 minus the probability of its "
                      "folder's class, the suggestion the likeliest other class.",
                      f"<table>{header.format('suggested')}{issues}</table>")
            + section("Near-duplicates", len(finding.duplicate_groups), "near_duplicates.csv",
                      "The same picture resized, re-encoded, cropped or brightened; groups across splits first "
                      "(a test photo whose copy is in train inflates the test score).", "".join(groups))
            + section("Outliers", len(finding.outliers), "outliers.csv",
                      "Far from every other image in feature space: another kind of picture, or a damaged one.",
                      f"<table>{header.format('distance').replace('<th>score</th>', '')}{far}</table>")
            + "</body></html>\n")
    write_atomically(result.directory / "audit.html", lambda target: target.write_text(page, encoding="utf-8"))
