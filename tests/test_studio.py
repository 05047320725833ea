"""The studio: its paths never lead out of its roots, a token off loopback, the sources' counts and a class a
page at a time, photos fixed and undone, the check and the audit, drops, augmentation, a training killed from
outside and resumed to its end, its live.jsonl read as it grows; and the page itself in Chromium end to end
(relabel and Undo, a training with its chart stopped and resumed, Review, the ONNX download, Try)."""

import os
import signal
import time
from io import BytesIO

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import Listening, launch_chromium, make_image_folder, playwright_or_skip, watch_page
from smallvision.errors import SmallvisionError
from smallvision.studio.app import create_studio, studio


@pytest.fixture
def folders(tmp_path):
    photos = make_image_folder(tmp_path / "roots" / "pets", per_class=7)
    outside = make_image_folder(tmp_path / "elsewhere" / "secret", splits=(), per_class=2)
    (photos / "train" / "cats" / "link.png").symlink_to(outside / "cats" / "cats0.png")
    (tmp_path / "roots" / "out").symlink_to(outside)
    return tmp_path / "roots", tmp_path / "runs"


def test_no_path_leads_out_of_the_roots(folders):
    roots, runs = folders
    with TestClient(create_studio([roots], runs)) as client:
        for path in ("../elsewhere/secret/cats/cats0.png", "/etc/passwd", "out/cats/cats0.png",
                     "pets/train/cats/link.png", "pets/../../elsewhere/secret/cats/cats0.png"):
            answer = client.get("/api/thumb", params={"root": 0, "path": path})
            assert answer.status_code == 403, (path, answer.text)
            assert "elsewhere" not in answer.json()["detail"] or ".." in path  # nothing about what lies outside
        assert client.get("/api/thumb", params={"root": 1, "path": "pets"}).status_code == 403
        assert client.get("/api/runs/..%2F..%2Froots/live").status_code in (403, 404)
        listed = client.get("/api/images", params={"root": 0, "path": "pets", "split": "train", "class": "cats",
                                                    "limit": 100}).json()
        assert listed["total"] == 7 and "pets/train/cats/link.png" not in listed["files"]  # the link out is not listed
        assert [source["path"] for source in client.get("/api/sources").json()] == ["pets"]  # not out/
        secret = str(roots.parent / "elsewhere" / "secret.toml")  # a recipe is a built-in's name, never a file
        (roots.parent / "elsewhere" / "secret.toml").write_text('name = "secret"\n')
        for asked in (client.post("/api/train", json={"root": 0, "path": "pets", "recipe": secret}),
                      client.post("/api/augment/preview", json={"root": 0, "path": "pets", "recipe": secret}),
                      client.get("/api/estimates", params={"root": 0, "path": "pets", "recipe": secret})):
            assert asked.status_code == 400 and "unknown recipe" in asked.json()["detail"], asked.text
        assert not (runs / "secret").exists() and not list(runs.glob("*/training.json"))


def test_a_token_is_needed_off_loopback_and_checked(folders):
    roots, runs = folders
    with pytest.raises(SmallvisionError, match="--token"):
        studio([roots], runs, host="0.0.0.0", port=0)
    with TestClient(create_studio([roots], runs, token="open-sesame")) as client:
        assert client.get("/api/state").status_code == 401
        assert client.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/state", headers={"Authorization": "Bearer open-sesame"}).status_code == 200
        assert client.get("/").status_code == 200  # the page asks for the token itself


def test_the_sources_show_their_counts_and_a_class_a_page_at_a_time(folders):
    roots, runs = folders
    with TestClient(create_studio([roots], runs)) as client:
        source, = client.get("/api/sources").json()
        assert source["classes"] == ["cats", "dogs"] and source["layout"] == "splits"
        assert source["counts"] == {"train": {"cats": 7, "dogs": 7}, "validation": {"cats": 7, "dogs": 7},
                                    "test": {"cats": 7, "dogs": 7}}  # the link out of the root not counted
        page = client.get("/api/images", params={"root": 0, "path": "pets", "split": "test", "class": "dogs",
                                                 "offset": 3, "limit": 3}).json()
        assert page["total"] == 7 and page["files"] == [f"pets/test/dogs/dogs{i}.png" for i in (3, 4, 5)]
        thumb = client.get("/api/thumb", params={"root": 0, "path": page["files"][0]})
        assert thumb.headers["content-type"] == "image/jpeg" and Image.open(BytesIO(thumb.content)).size == (40, 32)
        assert source["warnings"] == []  # 7 and 7: balanced
        for index in range(7, 16):  # 16 cats against 7 dogs
            (roots / "pets" / "train" / "cats" / f"more{index}.png").write_bytes(
                (roots / "pets" / "train" / "cats" / "cats0.png").read_bytes())
        with TestClient(create_studio([roots], runs)) as fresh:  # (a listing is reused for a few seconds)
            warnings = fresh.get("/api/sources").json()[0]["warnings"]
        assert len(warnings) == 1 and "16 images, the smallest 7 (2.3x)" in warnings[0]
        missing = client.get("/api/images", params={"root": 0, "path": "pets", "split": "test", "class": "birds"})
        assert missing.status_code == 400 and "cats, dogs" in missing.json()["detail"]


def wait_for(client, name, state, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = client.get(f"/api/runs/{name}/live").json()
        if state(answer):
            return answer
        time.sleep(0.1)
    raise AssertionError(f"{name}: still {answer['state']} after {seconds} s: {answer}")


def test_a_photo_relabelled_or_removed_in_the_studio_is_undone_byte_for_byte(folders):
    import hashlib

    roots, runs = folders
    photo = roots / "pets" / "train" / "cats" / "cats3.png"
    original = hashlib.sha1(photo.read_bytes()).hexdigest()
    with TestClient(create_studio([roots], runs)) as client:
        def count(label: str) -> int:
            return client.get("/api/images", params={"root": 0, "path": "pets", "class": label}).json()["total"]

        assert client.get("/api/journal", params={"root": 0, "path": "pets"}).json()["moves"] == 0
        fix = dict(root=0, path="pets", photo="pets/train/cats/cats3.png", action="relabel", to="dogs")
        answer = client.post("/api/fix", json=fix)
        assert answer.status_code == 200, answer.text
        assert answer.json()["moved"] == {"from": "train/cats/cats3.png", "to": "train/dogs/cats3.png",
                                          "action": "relabel"}
        assert not photo.exists() and (roots / "pets/train/dogs/cats3.png").is_file()
        assert (count("cats"), count("dogs")) == (6, 8)  # the listing is read again after a move
        removed = client.post("/api/fix", json={**fix, "photo": "pets/train/dogs/dogs0.png", "action": "remove"})
        assert removed.json()["journal"]["moves"] == 2 and count("dogs") == 7

        refusals = {403: [{**fix, "photo": "pets/../pets/train/cats/cats4.png"},
                          {**fix, "photo": "out/cats/cats0.png"},  # a symlink out of the root
                          {**fix, "path": "pets/train", "photo": "pets/test/cats/cats0.png"}],  # not in the source
                    400: [{**fix, "photo": "pets/train/cats/cats4.png", "to": "dgos"},
                          {**fix, "photo": "pets/train/cats/cats4.png", "action": "delete"},
                          {**fix, "photo": "pets/train/cats/nothing.png"}]}
        for status, cases in refusals.items():
            for case in cases:
                refused = client.post("/api/fix", json=case)
                assert refused.status_code == status and refused.json()["detail"], case
        assert (roots / "pets/train/cats/cats4.png").is_file()

        first = client.post("/api/undo", json={"root": 0, "path": "pets"}).json()
        assert first["put_back"] == [{"from": "train/dogs/dogs0.png", "to": ".smallvision-removed/train/dogs/dogs0.png",
                                      "action": "remove"}]
        second = client.post("/api/undo", json={"root": 0, "path": "pets"}).json()
        assert second["put_back"][0]["from"] == "train/cats/cats3.png" and second["journal"]["moves"] == 0
        assert hashlib.sha1(photo.read_bytes()).hexdigest() == original and (count("cats"), count("dogs")) == (7, 7)
        nothing = client.post("/api/undo", json={"root": 0, "path": "pets"})
        assert nothing.status_code == 400 and "undone already" in nothing.json()["detail"]


def test_an_audit_from_the_studio_finds_a_planted_mislabel_fixed_or_kept_there(tmp_path):
    import shutil

    roots, runs = tmp_path / "roots", tmp_path / "runs"
    pets = make_image_folder(roots / "pets", per_class=12)
    os.rename(pets / "train/cats/cats5.png", pets / "train/dogs/cats5.png")  # a cat in the dogs' folder
    shutil.copy(pets / "train/cats/cats1.png", pets / "train/cats/copy.png")
    app = create_studio([roots], runs)
    with TestClient(app) as client:
        assert client.get("/api/audit", params={"root": 0, "path": "pets"}).json() == {"state": "none"}
        assert client.post("/api/audit", json={"root": 0, "path": "pets"}).status_code == 202
        again = client.post("/api/audit", json={"root": 0, "path": "pets"})
        assert again.status_code == 409 and "one audit at a time" in again.json()["detail"]
        refused = client.post("/api/train", json={"root": 0, "path": "pets", "recipe": "catsdogs"})
        assert refused.status_code == 409 and "being audited" in refused.json()["detail"]
        deadline = time.monotonic() + 240
        while (answer := client.get("/api/audit", params={"root": 0, "path": "pets"}).json())["state"] == "auditing":
            assert time.monotonic() < deadline, "the audit took more than 240 s"
            time.sleep(0.5)
        assert answer["state"] == "done", answer
        found = answer["findings"]
        mislabel = next(row for row in found["label_issues"] if row["path"] == "train/dogs/cats5.png")
        assert mislabel["suggested"] == "cats" and mislabel["photo"] == "pets/train/dogs/cats5.png" and mislabel["here"]
        groups = {row["group"] for row in found["near_duplicates"] if row["path"] in ("train/cats/copy.png",
                                                                                     "train/cats/cats1.png")}
        assert len(groups) == 1  # the copy and its original, one group

        fixed = client.post("/api/fix", json={"root": 0, "path": "pets", "photo": mislabel["photo"],
                                              "action": "relabel", "to": "cats"})
        assert fixed.status_code == 200 and (pets / "train/cats/cats5.png").is_file()
        kept = client.post("/api/audit/keep", json={"root": 0, "path": "pets", "photo": "pets/train/cats/copy.png",
                                                     "table": "near_duplicates"})
        assert kept.status_code == 200, kept.text
        after = client.get("/api/audit", params={"root": 0, "path": "pets"}).json()["findings"]
        assert not next(row for row in after["label_issues"] if row["path"] == "train/dogs/cats5.png")["here"]
        assert next(row for row in after["near_duplicates"] if row["path"] == "train/cats/copy.png")["action"] == "keep"
        outside = client.post("/api/audit/keep", json={"root": 0, "path": "pets", "photo": "out.png", "table": "outliers"})
        assert outside.status_code == 403


def test_dropped_photos_make_a_new_folder_one_class_a_drop_each_bad_file_refused_with_its_reason(folders, monkeypatch):
    from smallvision.studio import drops

    roots, runs = folders
    photo = (roots / "pets/train/cats/cats0.png").read_bytes()
    big = BytesIO()
    Image.new("RGB", (400, 400), (200, 10, 10)).save(big, "BMP")  # 480 kB
    monkeypatch.setattr(drops, "MAX_PHOTO", 300_000)
    with TestClient(create_studio([roots], runs)) as client:
        def drop(folder, label, files):
            params = {"root": 0, "folder": folder, **({"class": label} if label is not None else {})}
            return client.post("/api/drop", params=params, files=[("files", item) for item in files])

        answer = drop("garden", "roses", [("rose.png", photo), ("notes.txt", b"not a photo"),
                                           ("huge.bmp", big.getvalue()), ("rose.png", photo)])
        assert answer.status_code == 200, answer.text
        done = answer.json()
        assert done["folder"] == {"root": 0, "path": "garden"} and done["saved"] == ["roses/rose.png", "roses/rose-2.png"]
        assert done["refused"] == [{"file": "notes.txt", "why": "not an image"},
                                   {"file": "huge.bmp", "why": "too big: 0.5 MB, at most 0 MB a photo"}]
        assert (roots / "garden/roses/rose.png").read_bytes() == photo and not list((roots / "garden").rglob(".partial*"))
        assert drop("garden", "tulips", [("t.png", photo)]).json()["saved"] == ["tulips/t.png"]
        garden, = [source for source in client.get("/api/sources").json() if source["name"] == "garden"]
        assert garden["classes"] == ["roses", "tulips"] and garden["counts"]["train"] == {"roses": 2, "tulips": 1}

        no_class = drop("garden", None, [("x.png", photo)])
        assert no_class.status_code == 400 and "needs its class name" in no_class.json()["detail"]
        for folder, status in (("..", 400), ("../elsewhere", 400), ("out", 403), ("test", 400), ("pets", 400)):
            refused = drop(folder, "roses", [("x.png", photo)]) if folder != "test" else drop("garden", folder, [("x.png", photo)])
            assert refused.status_code == status, (folder, refused.text)
        assert not (roots.parent / "elsewhere" / "secret" / "roses").exists()


def epochs_of(answer) -> list[int]:
    return [row["epoch"] for row in answer["rows"] if row["event"] == "epoch"]


def test_a_training_from_the_studio_survives_a_kill_and_is_resumed_to_its_end(folders):
    roots, runs = folders
    app = create_studio([roots], runs)
    with TestClient(app) as client:
        start = dict(root=0, path="pets", recipe="catsdogs", image_size=32, name="pets-1")
        refused = client.post("/api/train", json={**start, "epochs": 0})
        assert refused.status_code == 400 and "epochs must be at least 1" in refused.json()["detail"]
        # 60 epochs of 40-50 ms: the kill, at the second point, lands far from the end
        assert client.post("/api/train", json={**start, "epochs": 60}).status_code == 202
        again = client.post("/api/train", json={**start, "name": "pets-2", "epochs": 2})
        assert again.status_code == 409 and "one training at a time" in again.json()["detail"]

        # the chart has points while it trains (Stop and Resume: the page test clicks them); two: the first
        # epoch's checkpoint is written
        wait_for(client, "pets-1", lambda a: len(epochs_of(a)) >= 2)
        assert client.post("/api/runs/pets-1/resume").status_code == 409  # not while it trains
        with TestClient(create_studio([roots], runs)) as restarted:  # the studio restarted mid-training
            assert restarted.get("/api/state").json()["busy"] == "pets-1"  # found again, by its lock
            assert restarted.get("/api/runs/pets-1/live").json()["state"] in ("training", "finished")
        os.kill(app.state.trainer.current.process.pid, signal.SIGKILL)  # from outside, without a word
        ended = wait_for(client, "pets-1", lambda a: a["state"] == "ended")
        assert "killed (SIGKILL)" in ended["why"]
        run, = client.get("/api/runs").json()
        assert run["resumable"] and run["state"] == "ended"

        (roots / "pets").rename(roots / "pets-moved")  # Resume with the source gone: said, nothing started
        moved = client.post("/api/runs/pets-1/resume")
        assert moved.status_code == 400 and "is not there any more" in moved.json()["detail"]
        assert client.get("/api/runs/pets-1/live").json()["state"] == "ended"
        (roots / "pets-moved").rename(roots / "pets")
        assert client.post("/api/runs/pets-1/resume").status_code == 202
        done = wait_for(client, "pets-1", lambda a: a["state"] == "finished")
        epochs = epochs_of(done)
        assert epochs[-1] == 60 and set(range(1, 61)) <= set(epochs)  # every epoch charted, across two processes
        assert [row["event"] for row in done["rows"]].count("start") == 2 and done["rows"][-1]["event"] == "end"
        run, = client.get("/api/runs").json()
        assert run["state"] == "finished" and 0 <= run["metrics"]["test_accuracy"] <= 1 and run["epochs_done"] >= 60
        offset = done["offset"]  # read as it grows: nothing new past the end
        assert client.get("/api/runs/pets-1/live", params={"offset": offset}).json()["rows"] == []


class RealStudio(Listening):
    """`python -m smallvision studio ROOT --runs RUNS --port 0` as its own process, and where it listens."""

    def __init__(self, root, runs):
        super().__init__(["studio", root, "--runs", runs, "--port", "0"],
                         r"studio at (http://127\.0\.0\.1:\d+/) \(runs in .*\); Ctrl-C stops$")
        self.base = self.found.group(1)


def test_the_page_shows_the_data_and_trains_with_a_live_chart(folders, tmp_path):
    playwright = playwright_or_skip()
    roots, runs = folders
    server = RealStudio(roots, runs)
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                problems, elsewhere = watch_page(page, server.base)
                page.goto(server.base)
                page.wait_for_selector(".card")
                assert page.is_hidden("#token-form")
                card = page.inner_text(".card")
                assert "pets" in card and "cats" in card and "7" in card
                page.click(".card")
                page.wait_for_function("() => [...document.querySelectorAll('#grid img')]"
                                       ".filter(i => i.complete && i.naturalWidth).length == 7")
                assert page.inner_text("#page-info") == "1-7 of 7"  # the link out of the root is not there
                chosen = page.get_attribute("#grid figure >> nth=0 >> img", "alt")  # relabel one, then Undo
                photo = roots / chosen
                before = photo.read_bytes()
                page.select_option("#grid figure >> nth=0 >> select", "relabel:dogs")
                page.wait_for_function("() => document.querySelector('#page-info').textContent == '1-6 of 6'")
                assert not photo.exists() and (roots / chosen.replace("/cats/", "/dogs/")).read_bytes() == before
                assert "relabel" in page.inner_text("#journal-info")
                page.click("#undo")
                page.wait_for_function("() => document.querySelector('#page-info').textContent == '1-7 of 7'")
                assert photo.read_bytes() == before and page.is_disabled("#undo")
                page.click("#classes .chip >> nth=1")  # dogs
                page.wait_for_function("() => document.querySelector('#classes .chip[aria-pressed=true]')"
                                       ".textContent == 'dogs (7)'")

                page.click("#tab-train")
                page.select_option("#recipe", "catsdogs")
                page.wait_for_function("() => document.querySelector('#augment-said').textContent == "
                                       "\"catsdogs's own augmentation\"")
                page.wait_for_function("() => document.querySelector('#augment-preview').naturalWidth > 600")
                assert page.is_checked("#aug-rotation_range") and page.input_value("#aug-rotation_range-amount") == "20"
                page.uncheck("#aug-horizontal_flip")  # the preview again, and the training with it off
                page.wait_for_function("() => document.querySelector('#augment-said').textContent == "
                                       "\"changed from catsdogs's own: horizontal_flip\"")
                # 60 epochs of 40-50 ms: Stop, clicked at the first point, lands some 10 epochs later, far from the end
                page.fill("#epochs", "60")
                page.fill("#image_size", "32")
                page.click("#start")
                page.wait_for_function("() => studioRows().filter(r => r.event === 'epoch').length >= 1", timeout=120_000)
                page.click("#stop")  # the chart gained points; Stop writes a checkpoint, Resume goes on from it
                page.wait_for_function("() => document.querySelector('#watch-figures').textContent.startsWith('stopped')",
                                       timeout=120_000)
                name = httpx.get(server.base + "api/runs").json()[0]["name"]
                stopped = httpx.get(f"{server.base}api/runs/{name}/live").json()
                assert stopped["rows"][-1]["event"] == "stop" and 1 <= len(epochs_of(stopped)) < 60
                assert page.is_disabled("#stop")
                page.click("#resume")
                page.wait_for_function("() => document.querySelector('#watch-figures').textContent.startsWith('finished')",
                                       timeout=120_000)
                assert "epoch 60/60" in page.inner_text("#watch-figures")
                assert "horizontal_flip = false" in (runs / name / "recipe.toml").read_text()
                assert httpx.get(f"{server.base}api/runs/{name}/review").json() == {"run": name, "reviewed": False}
                page.click("#review-button")  # the confusion matrix, a click on a cell shows its photos
                page.wait_for_selector("#confusion .cell", timeout=120_000)
                hits = int(page.inner_text("#confusion .cell >> nth=0"))
                page.click("#confusion .cell >> nth=0")
                page.wait_for_function("n => document.querySelectorAll('#review-grid figure').length == n", arg=hits)
                assert page.inner_text("#review-info").startswith(f"cats predicted cats: {hits} photo(s)")
                check_review(server.base)
                with page.expect_download(timeout=120_000) as download:  # ship: the ONNX file, loaded as it came
                    page.click("#make-onnx")
                check_onnx(download.value.path(), roots / "pets" / "test" / "cats" / "cats0.png")
                page.click("#try")  # try: `serve` of the run on a page of its own, a photo chosen there
                page.wait_for_selector("#try-link:not([hidden])", timeout=120_000)
                tried = browser.new_page()
                tried.goto(page.get_attribute("#try-link", "href"))
                tried.set_input_files("#files", str(roots / "pets" / "test" / "dogs" / "dogs0.png"))
                tried.wait_for_selector(".result .label strong", timeout=60_000)
                assert tried.inner_text(".result .label strong") in ("cats", "dogs", "None of these")
                tried.close()
                drawn = page.evaluate("""() => { const c = document.querySelector('#chart');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let blue = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 150 && d[i] < 80) blue++; return blue; }""")
                assert drawn > 200  # the training line, drawn
                page.click("#tab-runs")
                page.wait_for_selector("#run-table tbody tr")
                assert "finished" in page.inner_text("#run-table tbody tr")
                page.click("#compare")  # the runs in one picture
                page.wait_for_function("() => { const i = document.querySelector('#compare-picture');"
                                       " return !i.hidden && i.complete && i.naturalWidth > 300; }")
                page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
                assert problems == [] and elsewhere == []
            finally:
                browser.close()
    finally:
        status, stderr = server.stop()
        assert status == 0, stderr


def check_onnx(path, photo) -> None:
    """The downloaded ONNX file answers a photo with probabilities (onnxruntime, no PyTorch)."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path))
    pixels = np.asarray(Image.open(photo).convert("RGB").resize((32, 32)))
    probabilities = session.run(None, {session.get_inputs()[0].name: pixels[None]})[0]
    assert probabilities.shape == (1, 2) and abs(float(probabilities.sum()) - 1) < 1e-4


def check_review(base: str) -> None:
    """The review the page asked for, through the API: the confusion matrix, every test photo by loss with its
    place under the roots, and Grad-CAM pictures (paths out of the roots refused)."""
    with httpx.Client(base_url=base, timeout=120) as client:
        name = client.get("/api/runs").json()[0]["name"]
        review = client.get(f"/api/runs/{name}/review").json()  # found again: the page's evaluation
        assert review["reviewed"] and review["split"] == "test" and review["class_names"] == ["cats", "dogs"]
        assert sum(map(sum, review["confusion"])) == review["images"] == len(review["photos"]) == 14
        assert review["source_at"] == {"root": 0, "path": "pets"}
        losses = [photo["loss"] for photo in review["photos"]]
        assert losses == sorted(losses, reverse=True)  # highest loss first
        cell = [photo for photo in review["photos"] if (photo["true"], photo["predicted"]) == ("cats", "dogs")]
        assert len(cell) == review["confusion"][0][1]
        assert all(photo["at"]["path"].startswith("pets/test/") for photo in review["photos"])
        chosen = [photo["at"] for photo in review["photos"][:2]]
        pictures = client.post(f"/api/runs/{name}/gradcam", json=chosen).json()
        assert [picture["path"] for picture in pictures] == [at["path"] for at in chosen]
        png = client.get(pictures[0]["picture"])
        assert png.headers["content-type"] == "image/png" and Image.open(BytesIO(png.content)).width > 100
        assert client.post(f"/api/runs/{name}/gradcam", json=[{"root": 0, "path": "out/cats/cats0.png"}]).status_code == 403


def test_a_finished_runs_files_download_by_a_link_that_carries_the_token(folders, tmp_path):
    """Behind a token, a made file's link works with ?token= (a download cannot send a header) and not without
    it; the ONNX file loads; the runs compared in a picture; no such product, no run out of the folder.
    (The page test downloads the ONNX file and tries a photo in Chromium.)"""
    import smallvision as sv

    roots, runs = folders
    sv.train(roots / "pets", "catsdogs", out=runs / "pets-1", image_size=32, epochs=2, progress=False)
    app = create_studio([roots], runs, token="open-sesame")
    with TestClient(app, headers={"Authorization": "Bearer open-sesame"}) as client:
        made = client.post("/api/runs/pets-1/make/onnx")
        assert made.status_code == 200, made.text
        assert TestClient(app).get(made.json()["file"]).status_code == 401  # neither header nor ?token=
        download = TestClient(app).get(made.json()["file"], params={"token": "open-sesame"})  # a link carries it
        assert download.status_code == 200 and "pets-1-model.onnx" in download.headers["content-disposition"]
        (tmp_path / "model.onnx").write_bytes(download.content)
        check_onnx(tmp_path / "model.onnx", roots / "pets" / "test" / "cats" / "cats0.png")
        assert client.post("/api/runs/pets-1/make/pdf").status_code == 400
        picture = client.get("/api/compare.png", params={"names": "pets-1"})
        assert picture.headers["content-type"] == "image/png" and Image.open(BytesIO(picture.content)).width > 300
        assert client.get("/api/compare.png", params={"names": "../pets-1"}).status_code == 403


def test_the_recipes_for_photos_come_with_an_estimate_for_the_folder(tmp_path, monkeypatch):
    from smallvision import budget, workflow
    from smallvision.recipe import builtin_recipes, load_recipe

    roots, runs = tmp_path / "roots", tmp_path / "runs"
    make_image_folder(roots / "pets", per_class=7)
    made_up = budget.Rates(forward=100.0, frozen_step=50.0, tuning_step=25.0)  # nothing measured in a test
    for module in (budget, workflow):
        monkeypatch.setattr(module, "rates_here", lambda *args, **kwargs: made_up)
    with TestClient(create_studio([roots], runs)) as client:
        estimates = client.get("/api/estimates", params={"root": 0, "path": "pets"}).json()["estimates"]
        from_scratch = set(builtin_recipes()) - set(budget.CANDIDATES)  # the digits' too: photos decoded at 28x28
        assert set(estimates) == {*budget.CANDIDATES, *from_scratch}
        rates, counts = budget.rates_here(), budget.Counts(train=14, validation=14, test=14)  # the folder's own splits
        for name, recipe in budget.candidate_recipes({}).items():
            assert estimates[name] == pytest.approx(budget.estimate_seconds(recipe, counts, rates), abs=0.05)
        for name in from_scratch:
            assert estimates[name] == pytest.approx(budget.estimate_seconds(load_recipe(name), counts, rates), abs=0.05)
        asked = {"root": 0, "path": "pets"}
        one = client.get("/api/estimates", params={**asked, "recipe": "catsdogs"}).json()["estimates"]
        assert one == {"catsdogs": estimates["catsdogs"]}  # the page asks for the chosen recipe alone
        pretrained = client.get("/api/estimates", params={**asked, "recipe": "catsdogs-features"}).json()["estimates"]
        assert set(pretrained) == set(budget.CANDIDATES)  # one backbone: the three together
        wrong = client.get("/api/estimates", params={**asked, "recipe": "catdogs"})
        assert wrong.status_code == 400 and "catsdogs" in wrong.json()["detail"]
        recipes = {recipe["name"]: recipe for recipe in client.get("/api/recipes").json()}
        assert "0.98" in recipes["catsdogs-finetune"]["reached"]
        assert recipes["seed-mnist"]["epochs"] == load_recipe("seed-mnist").schedule.epochs  # the placeholders


def test_a_live_log_that_cannot_be_written_costs_the_charts_not_the_training(tmp_path):
    import smallvision as sv

    folder = make_image_folder(tmp_path / "pets", per_class=4)
    out = tmp_path / "run"
    out.mkdir()
    (out / "live.jsonl").mkdir()  # where the file would go: it cannot be opened
    run = sv.train(folder, "catsdogs", out=out, image_size=32, epochs=2, progress=False, force=True)
    assert (out / "model.json").is_file() and run.metrics["epochs"] == 2


def test_a_try_page_that_cannot_start_says_why_at_once(tmp_path):
    from smallvision.studio.products import Tried

    started = time.monotonic()
    with pytest.raises(SmallvisionError, match="serve did not start .*no such run directory"):
        Tried().start(tmp_path / "not-a-run", None)
    assert time.monotonic() - started < 60  # not the 120 s wait for a first line that will never come


def test_augmentation_is_previewed_as_training_makes_it_and_trained_as_switched(folders, monkeypatch):
    """The preview: each training photo beside copies made by training's own transform (unchanged with
    every switch off); a start with switches moved trains a recipe file with them; a bad amount is the
    recipe's own message."""
    import numpy as np

    from smallvision.recipe import load_recipe
    from smallvision.studio.augmenting import GAP, PREVIEW_COPIES
    from smallvision.studio.trainer import Trainer

    roots, runs = folders
    started = []
    monkeypatch.setattr(Trainer, "start", lambda self, arguments, run: started.append(arguments))
    with TestClient(create_studio([roots], runs)) as client:
        recipe = {r["name"]: r for r in client.get("/api/recipes").json()}["seed-catsdogs-augment"]
        assert recipe["augment"]["rotation_range"] == 40 and recipe["augment"]["horizontal_flip"] is True

        def sheet(augment, seed=0):
            answer = client.post("/api/augment/preview", json={"root": 0, "path": "pets", "recipe": "seed-catsdogs-augment",
                                                               "augment": augment, "seed": seed})
            assert answer.status_code == 200, answer.text
            return np.asarray(Image.open(BytesIO(answer.content)).convert("RGB")).astype(int)

        size = load_recipe("seed-catsdogs-augment").data.image_size
        off = {"rotation_range": 0, "width_shift_range": 0, "height_shift_range": 0, "shear_range": 0,
               "zoom_range": 0, "horizontal_flip": False}
        still = sheet(off)
        assert still.shape == (2 * size + GAP, (1 + PREVIEW_COPIES) * (size + GAP) - GAP, 3)  # a row a class
        tiles = [still[:size, c * (size + GAP):c * (size + GAP) + size] for c in range(1 + PREVIEW_COPIES)]
        assert all((tile == tiles[0]).all() for tile in tiles[1:])  # nothing on: the copies are the photo
        moved = sheet(None)  # the recipe's own: rotation, shifts, shear, zoom, flips
        copies = [moved[:size, c * (size + GAP):c * (size + GAP) + size] for c in range(1, 1 + PREVIEW_COPIES)]
        assert (moved[:size, :size] == tiles[0]).all()  # the original first, as it was
        assert all(np.abs(copy - tiles[0]).mean() > 1 for copy in copies)
        assert not (sheet(None, seed=1) == moved).all()  # "other draws"
        flipped = sheet({**off, "horizontal_flip": True, "vertical_flip": True})  # only flips: each copy a mirror
        for c in range(1, 1 + PREVIEW_COPIES):
            copy = flipped[:size, c * (size + GAP):c * (size + GAP) + size]
            assert any((copy == variant).all() for variant in (tiles[0], tiles[0][:, ::-1], tiles[0][::-1],
                                                              tiles[0][::-1, ::-1]))

        bad = client.post("/api/augment/preview", json={"root": 0, "path": "pets", "recipe": "seed-catsdogs-augment",
                                                        "augment": {"rotation_range": -5}})
        assert bad.status_code == 400 and "rotation_range must not be negative" in bad.json()["detail"]
        assert client.post("/api/augment/preview", json={"root": 0, "path": "out", "recipe": "catsdogs"}).status_code == 403

        answer = client.post("/api/train", json={"root": 0, "path": "pets", "recipe": "seed-catsdogs-augment",
                                                 "name": "turned", "epochs": 1,
                                                 "augment": {"rotation_range": 10, "vertical_flip": True}})
        assert answer.status_code == 202, answer.text
        arguments, = started
        file = arguments[arguments.index("--recipe") + 1]
        trained = load_recipe(file)
        assert trained.name == "seed-catsdogs-augment" and trained.augment.rotation_range == 10
        assert trained.augment.vertical_flip and trained.augment.shear_range == 0.2  # the rest as the recipe has it
        assert arguments[arguments.index("--epochs") + 1] == "1"
        refused = client.post("/api/train", json={"root": 0, "path": "pets", "recipe": "seed-catsdogs-augment",
                                                  "augment": {"zoom_rnge": 0.1}})
        assert refused.status_code == 400 and "zoom_range" in refused.json()["detail"] and len(started) == 1


def test_a_check_from_the_studio_names_damaged_files_and_copies_and_its_removals_are_undone(folders):
    import shutil

    roots, runs = folders
    pets = roots / "pets"
    (pets / "train" / "dogs" / "broken.png").write_bytes(b"not a png at all")
    shutil.copy(pets / "train" / "cats" / "cats0.png", pets / "test" / "cats" / "copied.png")  # a leak
    with TestClient(create_studio([roots], runs)) as client:
        checked = client.post("/api/check", json={"root": 0, "path": "pets"})
        assert checked.status_code == 200, checked.text
        found = checked.json()
        assert found["problem"] is None
        broken, = found["skipped"]
        assert broken["photo"] == "pets/train/dogs/broken.png" and broken["reason"]
        assert [{(c["split"], c["photo"]) for c in group} for group in found["duplicates"]] == [
            {("train", "pets/train/cats/cats0.png"), ("test", "pets/test/cats/copied.png")}]
        assert any("more than one split" in warning for warning in found["warnings"])
        assert any(line.startswith("image size") for line in found["statistics"])
        for photo in ("pets/train/dogs/broken.png", "pets/test/cats/copied.png"):  # the page's remove buttons
            assert client.post("/api/fix", json={"root": 0, "path": "pets", "photo": photo, "action": "remove"}).status_code == 200
        again = client.post("/api/check", json={"root": 0, "path": "pets"}).json()
        assert again["skipped"] == [] and again["duplicates"] == []
        for _ in range(2):
            assert client.post("/api/undo", json={"root": 0, "path": "pets"}).status_code == 200
        assert (pets / "train" / "dogs" / "broken.png").read_bytes() == b"not a png at all"
        assert client.post("/api/check", json={"root": 0, "path": "out"}).status_code == 403


def test_digits_in_idx_files_are_a_source_read_drawn_checked_and_trained_never_moved(tmp_path, monkeypatch):
    import numpy as np

    from conftest import write_idx_source
    from smallvision import budget, workflow
    from smallvision.recipe import load_recipe
    from smallvision.studio.trainer import Trainer

    roots, runs = tmp_path / "roots", tmp_path / "runs"
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    write_idx_source(roots / "digits", train, np.arange(60, dtype=np.uint8) % 3,
                     rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), np.arange(30, dtype=np.uint8) % 3)
    made_up = budget.Rates(forward=1000.0, frozen_step=100.0, tuning_step=100.0)
    monkeypatch.setattr(workflow, "rates_here", lambda *args, **kwargs: made_up)  # nothing measured in a test
    started = []
    monkeypatch.setattr(Trainer, "start", lambda self, arguments, run: started.append(arguments))
    with TestClient(create_studio([roots], runs)) as client:
        source, = client.get("/api/sources").json()
        assert source["path"] == "digits" and source["layout"] == "idx" and source["classes"] == ["0", "1", "2"]
        assert source["counts"] == {"train": {"0": 20, "1": 20, "2": 20}, "test": {"0": 10, "1": 10, "2": 10}}
        page = client.get("/api/images", params={"root": 0, "path": "digits", "split": "train", "class": "1",
                                                  "limit": 5}).json()
        assert page["total"] == 20 and page["files"] == [f"digits/train#{i}" for i in (1, 4, 7, 10, 13)]
        drawn = client.get("/api/thumb", params={"root": 0, "path": "digits/train#4"})
        assert drawn.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(BytesIO(drawn.content)))
        assert pixels.shape == (112, 112) and (pixels[::4, ::4] == train[4]).all()  # the digit, 4x, sharp
        assert client.get("/api/thumb", params={"root": 0, "path": "digits/train#60"}).status_code == 404
        assert client.get("/api/thumb", params={"root": 0, "path": "digits/../../train#1"}).status_code == 403
        fixed = client.post("/api/fix", json={"root": 0, "path": "digits", "photo": "digits/train#4", "action": "remove"})
        assert fixed.status_code == 400 and "not moved one at a time" in fixed.json()["detail"]
        checked = client.post("/api/check", json={"root": 0, "path": "digits"}).json()
        assert checked["problem"] is None and checked["skipped"] == []
        preview = client.post("/api/augment/preview", json={"root": 0, "path": "digits", "recipe": "seed-mnist",
                                                            "augment": {"rotation_range": 30}})
        assert preview.status_code == 200 and Image.open(BytesIO(preview.content)).height == 2 * 112 + 4
        counts = budget.Counts(train=60, validation=0, test=30)
        assert client.get("/api/estimates", params={"root": 0, "path": "digits", "recipe": "seed-mnist"}).json() == {
            "estimates": {"seed-mnist": round(budget.estimate_seconds(load_recipe("seed-mnist"), counts, made_up), 1)}}
        assert client.get("/api/estimates", params={"root": 0, "path": "digits",
                                                    "recipe": "catsdogs-features"}).json() == {"estimates": {}}
        assert client.post("/api/train", json={"root": 0, "path": "digits", "recipe": "seed-mnist"}).status_code == 202
        assert started[0][:3] == [str(roots.resolve() / "digits"), "--recipe", "seed-mnist"]


def test_keep_for_a_digit_of_idx_files_marks_its_own_splits_row_only(tmp_path):
    """A digit is named by its index, which each split has: keep marks the row of the digit's split."""
    import csv

    from smallvision.studio.audits import set_action

    table = tmp_path / "label_issues.csv"
    table.write_text("path,split,label,suggested,score,action\n3,train,1,7,0.9,\n3,test,2,7,0.8,\n")
    set_action(table, "3", "keep", split="test")
    rows = list(csv.DictReader(table.open()))
    assert [(row["split"], row["action"]) for row in rows] == [("train", ""), ("test", "keep")]
    with pytest.raises(SmallvisionError, match="no row for 4"):
        set_action(table, "4", "keep", split="train")
