"""Benchmark: issue 27's figures for the studio, each beside its baseline from the same run.

    python benchmarks/studio_figures.py speed [--rounds 3] [--only RECIPE] [--scale 1]
        # images/s of a training started from the studio against the same `smallvision train` command in a
        # terminal, alternating rounds, medians: seed-mnist (8 epochs) on a folder of 12,000 MNIST digits as
        # PNGs, and catsdogs (2 epochs) on the shared cats-vs-dogs folder
    python benchmarks/studio_figures.py page
        # in Chromium: the page's first paint, and the first 60 thumbnails of a class, with the shared
        # cats-vs-dogs folder chosen; each epoch's end on the chart, seconds after live.jsonl got it, for a
        # training started from the page; paging through a class of 10,000 photos, the tab's memory
    python benchmarks/studio_figures.py shots --out DIR
        # screenshots of each part, on 160 of the shared cats-vs-dogs photos with three planted mistakes: the
        # data with a relabel undone, the check's findings, the audit's, new photos dropped, a recipe's
        # estimate and augmentation preview, a training's live chart, the review (confusion matrix, mistakes
        # with Grad-CAM), the try page (a camera frame and a photo), the runs compared

Everything goes under --work (default: a temporary directory).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
SHARED = Path(os.environ.get("SMALLVISION_DATA", ROOT.parent / "shared" / "datasets"))
ENV = dict(os.environ, SMALLVISION_PROGRESS="0")


class Studio:
    """`smallvision studio ROOTS --runs RUNS --port 0` as its own process."""

    def __init__(self, roots: list[Path], runs: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "smallvision", "studio", *map(str, roots), "--runs",
                                         str(runs), "--port", "0"], stdout=subprocess.PIPE, text=True, env=ENV)
        first = self.process.stdout.readline()
        self.base = re.match(r"studio at (\S+) ", first).group(1)
        self.http = httpx.Client(base_url=self.base, timeout=600)

    def train(self, body: dict) -> dict:
        """Start, wait for the end; the run's metrics.json."""
        import json

        answer = self.http.post("/api/train", json=body)
        answer.raise_for_status()
        name = answer.json()["run"]
        while True:
            live = self.http.get(f"/api/runs/{name}/live").json()
            if live["state"] in ("finished", "ended", "stopped"):
                break
            time.sleep(0.5)
        assert live["state"] == "finished", live
        return json.loads(Path(live["run_path"], "metrics.json").read_text())

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def mnist_folder(work: Path, count: int = 12000) -> Path:
    """The first `count` MNIST training digits and 2,000 test digits as PNG files, ROOT/SPLIT/DIGIT/N.png."""
    from PIL import Image

    from smallvision.data.mnist import load_idx_source, locate_mnist

    folder = work / "roots" / "mnist-folder"
    if folder.is_dir():
        return folder
    source = load_idx_source(locate_mnist(None), name="mnist")
    for split, images, limit in (("train", source.train, count), ("test", source.test, 2000)):
        for index in range(limit):
            path = folder / split / str(int(images.labels[index])) / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images.images[index, 0].numpy()).save(path)
    return folder


def speed(work: Path, rounds: int, only: str | None, scale: int = 1) -> None:
    import json

    digits = mnist_folder(work)
    photos = SHARED / "cats_and_dogs_small"
    studio = Studio([work / "roots", SHARED], work / "runs")  # a symlink to the shared folder would lead out of a root
    try:
        for recipe, folder, epochs, root in (("seed-mnist", digits, 8, 0), ("catsdogs", photos, 2, 1)):
            if only and recipe != only:
                continue
            epochs *= scale  # longer runs: each averages over more of this machine's moods
            cli, ours = [], []
            for round_ in range(rounds):
                for where in (("cli", "studio") if round_ % 2 == 0 else ("studio", "cli")):
                    name = f"{recipe}-{where}-{round_}"
                    if where == "cli":
                        subprocess.run([sys.executable, "-m", "smallvision", "train", str(folder), "--recipe", recipe,
                                        "--epochs", str(epochs), "--out", str(work / "runs" / name), "--quiet"],
                                       check=True, env=ENV, stdout=subprocess.DEVNULL)
                        metrics = json.loads((work / "runs" / name / "metrics.json").read_text())
                        cli.append(metrics["images_per_second"])
                    else:
                        metrics = studio.train({"root": root, "path": folder.name, "recipe": recipe, "epochs": epochs,
                                                "name": name})
                        ours.append(metrics["images_per_second"])
                    print(f"  {name}: {metrics['images_per_second']:,.1f} images/s", flush=True)
            a, b = statistics.median(cli), statistics.median(ours)
            paired = sorted(o / c for o, c in zip(ours, cli))  # each round's own ratio: the drift between rounds out
            print(f"{recipe}: started from the studio {b:,.1f} images/s, from a terminal {a:,.1f}: {b / a:.3f}x "
                  f"(bar: within 3%), {rounds} alternating rounds, medians; each round's studio/terminal "
                  f"{', '.join(f'{r:.3f}' for r in paired)} (median {statistics.median(paired):.3f})", flush=True)
    finally:
        studio.close()


def many_photos(work: Path, count: int = 10000) -> Path:
    """A folder with one class of `count` photos (the shared cats, re-encoded small, many times over)."""
    from PIL import Image

    folder = work / "roots" / "big-class"
    target = folder / "train" / "many"
    if target.is_dir() and len(list(target.iterdir())) >= count:
        return folder
    target.mkdir(parents=True, exist_ok=True)
    (folder / "train" / "few").mkdir(parents=True, exist_ok=True)
    cats = sorted((SHARED / "cats_and_dogs_small" / "train" / "cats").iterdir())[:200]
    small = []
    for path in cats:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((240, 240))
            small.append(image.copy())
    for index in range(count):
        small[index % len(small)].save(target / f"{index:05d}.jpg", quality=85)
    small[0].save(folder / "train" / "few" / "00000.jpg")
    return folder


def page(work: Path) -> None:
    from playwright.sync_api import sync_playwright

    from conftest import launch_chromium, make_image_folder

    if not (work / "roots" / "pets-small").exists():
        make_image_folder(work / "roots" / "pets-small", per_class=30)
    many_photos(work)
    studio = Studio([work / "roots", SHARED], work / "runs")
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            started = time.perf_counter()
            page.goto(studio.base)
            page.wait_for_selector(".card")
            cards = page.locator(".card")
            index = [cards.nth(i).inner_text().split("\n")[0] for i in range(cards.count())].index("cats_and_dogs_small")
            cards.nth(index).click()
            page.wait_for_function("() => [...document.querySelectorAll('#grid img')].filter(i => i.complete && "
                                   "i.naturalWidth).length == 60")
            shown = time.perf_counter() - started
            paint = page.evaluate("performance.getEntriesByType('paint').map(e => [e.name, e.startTime])")
            print(f"first paint: {dict(paint)} ms; the page, the sources and 60 thumbnails of cats_and_dogs_small's "
                  f"cats shown {shown:.2f} s after the address was opened (bar: first paint under 1 s)", flush=True)

            page.click("#tab-train")
            value = page.evaluate("[...document.querySelectorAll('#train-source option')]"
                                  ".find(o => o.textContent.includes('pets-small')).value")
            page.select_option("#train-source", value)
            page.select_option("#recipe", "catsdogs")
            page.fill("#epochs", "40")
            page.fill("#image_size", "64")
            page.evaluate("""() => { window.lags = []; const seen = new Set();
                const watch = () => { const now = Date.now() / 1000;
                  for (const r of (window.studioRows ? window.studioRows() : [])) {
                    if (r.event === 'epoch' && !seen.has(r.epoch)) { seen.add(r.epoch); window.lags.push(now - r.time); } }
                  requestAnimationFrame(watch); }; requestAnimationFrame(watch); }""")
            page.click("#start")
            page.wait_for_function("() => document.querySelector('#watch-figures').textContent.startsWith('finished')",
                                   timeout=600_000)
            lags = page.evaluate("window.lags")
            print(f"an epoch's end on the chart after live.jsonl got it: median {statistics.median(lags):.3f} s, "
                  f"max {max(lags):.3f} s over {len(lags)} epochs (bar: within 1 s)", flush=True)

            page.click("#tab-data")
            cards = page.locator(".card")
            index = [cards.nth(i).inner_text().split("\n")[0] for i in range(cards.count())].index("big-class")
            cards.nth(index).click()
            page.click("#classes .chip >> text=many")
            page.wait_for_function("() => document.querySelector('#page-info').textContent.includes('of 10000')")
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            highest = 0
            pages = 0
            before = renderer_memory()
            while not page.is_disabled("#next"):
                page.click("#next")
                pages += 1
                page.wait_for_function("() => [...document.querySelectorAll('#grid img')].every(i => i.complete)")
                heap = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}["JSHeapTotalSize"]
                highest = max(highest, heap)
            after = renderer_memory()
            pid = max(after, key=lambda p: after[p])  # the tab's renderer: the biggest
            print(f"a class of 10,000 photos paged through ({pages} pages of 60): the tab's JS heap at most "
                  f"{highest / 2**20:.1f} MB; its renderer process {after[pid] / 2**20:.0f} MB resident at the end, "
                  f"{before.get(pid, 0) / 2**20:.0f} MB before the first page (bar: under 500 MB)", flush=True)
            browser.close()
    finally:
        studio.close()


def small_catsdogs(work: Path) -> Path:
    """40 train, 20 validation and 20 test photos a class from the shared set, a dog in the cats' folder and a
    copy of a test photo in train (a leak): what the audit should point at; and a truncated photo (the check's)."""
    import shutil

    root = work / "roots" / "pets-real"
    if root.exists():
        return root
    for split, count in (("train", 40), ("validation", 20), ("test", 20)):
        for name in ("cats", "dogs"):
            (root / split / name).mkdir(parents=True)
            for path in sorted((SHARED / "cats_and_dogs_small" / split / name).iterdir())[:count]:
                shutil.copy2(path, root / split / name / path.name)
    dog = sorted((root / "train" / "dogs").iterdir())[0]
    os.rename(dog, root / "train" / "cats" / dog.name)
    test_photo = sorted((root / "test" / "cats").iterdir())[0]
    shutil.copy2(test_photo, root / "train" / "cats" / f"copy-{test_photo.name}")
    whole = sorted((root / "train" / "dogs").iterdir())[0].read_bytes()
    (root / "train" / "dogs" / "truncated.jpg").write_bytes(whole[:len(whole) // 3])  # what `data check` names
    return root


def shots(work: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from conftest import launch_chromium

    out.mkdir(parents=True, exist_ok=True)
    small_catsdogs(work)
    studio = Studio([work / "roots"], work / "runs")
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(studio.base)
            page.wait_for_selector(".card")
            page.click(".card >> text=pets-real")
            page.wait_for_function("() => [...document.querySelectorAll('#grid img')].filter(i => i.complete && "
                                   "i.naturalWidth).length == 42")
            page.select_option("#grid figure >> nth=3 >> select", "relabel:dogs")
            page.wait_for_function("() => document.querySelector('#page-info').textContent == '1-41 of 41'")
            page.screenshot(path=str(out / "1-data-relabelled.png"), full_page=True)
            page.click("#undo")
            page.wait_for_function("() => document.querySelector('#page-info').textContent == '1-42 of 42'")
            page.click("#check")
            page.wait_for_function("() => !document.querySelector('#checked').hidden", timeout=600_000)
            page.wait_for_timeout(1000)  # the copies' thumbnails
            page.locator("#checked").scroll_into_view_if_needed()
            page.screenshot(path=str(out / "2-check.png"))
            page.click("#audit")
            page.wait_for_function("() => document.querySelector('#audit-info').textContent.startsWith('audited')",
                                   timeout=600_000)
            page.locator("#findings").scroll_into_view_if_needed()
            page.screenshot(path=str(out / "3-audit.png"), full_page=True)
            page.fill("#drop-folder", "garden")
            page.fill("#drop-class", "roses")
            notes = work / "notes.txt"
            notes.write_text("not a photo")
            page.set_input_files("#drop-files", [str(sorted((SHARED / "cats_and_dogs_small" / "test" / "cats").iterdir())[-1]),
                                                 str(notes)])
            page.wait_for_function("() => document.querySelector('#status').textContent.includes('saved into garden')")
            page.screenshot(path=str(out / "4-dropped.png"))

            page.click("#tab-train")
            value = page.evaluate("[...document.querySelectorAll('#train-source option')]"
                                  ".find(o => o.textContent.includes('pets-real')).value")
            page.select_option("#train-source", value)
            page.select_option("#recipe", "catsdogs")  # from scratch: its estimate and its augmentation
            page.wait_for_function("() => document.querySelector('#recipe-about').textContent.includes('About')",
                                   timeout=600_000)
            page.uncheck("#aug-horizontal_flip")
            page.check("#aug-vertical_flip")
            page.wait_for_function("() => document.querySelector('#augment-said').textContent.includes('vertical_flip')")
            page.wait_for_timeout(500)
            page.locator("#augment").scroll_into_view_if_needed()
            page.screenshot(path=str(out / "5-augmentation.png"))
            page.select_option("#recipe", "catsdogs-features")
            page.click("#start")
            page.wait_for_function("() => (window.studioRows ? window.studioRows() : []).filter(r => r.event == 'epoch')"
                                   ".length >= 3", timeout=600_000)
            page.screenshot(path=str(out / "6-training.png"))
            page.wait_for_function("() => document.querySelector('#watch-figures').textContent.startsWith('finished')",
                                   timeout=600_000)
            page.click("#review-button")
            page.wait_for_selector("#confusion .cell", timeout=600_000)
            page.click("#gradcam-these")
            page.wait_for_selector("#review-grid img.gradcam", timeout=600_000)
            page.wait_for_timeout(1500)
            page.locator("#review").scroll_into_view_if_needed()
            page.screenshot(path=str(out / "7-review.png"), full_page=True)
            page.click("#try")
            page.wait_for_selector("#try-link:not([hidden])", timeout=600_000)
            tried = browser.new_page(viewport={"width": 1280, "height": 900})
            tried.goto(page.get_attribute("#try-link", "href"))
            tried.click("#camera")  # Chromium's own test camera (conftest's flags): a frame, classified
            tried.wait_for_function("() => document.querySelector('#video').videoWidth > 0")
            tried.click("#snap")
            tried.set_input_files("#files", str(sorted((SHARED / "cats_and_dogs_small" / "test" / "dogs").iterdir())[-1]))
            tried.wait_for_function("() => document.querySelectorAll('.result img.heat:not([hidden])').length == 2",
                                    timeout=600_000)
            tried.screenshot(path=str(out / "8-try.png"), full_page=True)
            tried.close()
            page.click("#tab-runs")
            page.click("#compare")
            page.wait_for_function("() => { const i = document.querySelector('#compare-picture');"
                                   " return !i.hidden && i.complete && i.naturalWidth > 300; }")
            page.screenshot(path=str(out / "9-runs.png"), full_page=True)
            browser.close()
    finally:
        studio.close()
    print(f"screenshots in {out}", flush=True)


def renderer_memory() -> dict[int, int]:
    """The resident memory of each of Chromium's renderer processes, by pid, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"--type=renderer" in command and b"chrom" in command.lower():
                pages = int((entry / "statm").read_text().split()[1])
                found[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figure", choices=("speed", "page", "shots"))
    parser.add_argument("--out", help="shots: the folder for the screenshots", default="studio-shots")
    parser.add_argument("--work")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("seed-mnist", "catsdogs"), help="speed: one recipe")
    parser.add_argument("--scale", type=int, default=1, help="speed: this many times the epochs (longer runs)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="studio-figures-"))
    (work / "roots").mkdir(parents=True, exist_ok=True)
    print(f"work: {work}", flush=True)
    if args.figure == "shots":
        shots(work, Path(args.out))
    else:
        speed(work, args.rounds, args.only, args.scale) if args.figure == "speed" else page(work)


if __name__ == "__main__":
    main()
