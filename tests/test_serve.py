"""`smallvision serve`: the API through FastAPI's TestClient (answers, limits, batching), a real uvicorn
process (its address, an answer, a clean stop on SIGINT and SIGTERM) and the page in headless Chromium."""

import base64
import io
import json
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import numpy as np

fastapi = pytest.importorskip("fastapi")
from conftest import Listening, launch_chromium, playwright_or_skip, watch_page  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image, ImageStat  # noqa: E402

from smallvision.cli import main  # noqa: E402
from smallvision.serve import create_app  # noqa: E402
from smallvision.serve import server as serve_server  # noqa: E402



def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb as Pillow sees it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


@pytest.fixture(scope="module")
def shape_photos(shapes_run, shapes_folder) -> dict[str, list[Path]]:
    """Test images of each class that the run classifies right and knows, 3 a class (so expected labels
    are sure: the page says "None of these" for the 5% of known photos the threshold lets go)."""
    chosen = {}
    for name in shapes_run.class_names:
        files = sorted((shapes_folder / "test" / name).iterdir())[:12]
        right = [Path(r["path"]) for r in shapes_run.predict(files) if r["label"] == name and not r.get("unknown")]
        assert len(right) >= 3, name
        chosen[name] = right[:3]
    return chosen


@pytest.fixture(scope="module")
def client(shapes_run):
    with TestClient(create_app([shapes_run.path])) as test_client:
        yield test_client


def test_one_image_as_the_body_is_answered_as_predict_answers(client, shapes_run, shape_photos):
    photo = shape_photos["red_square"][0]
    answer = client.post("/predict", content=photo.read_bytes(), headers={"content-type": "image/png"})
    assert answer.status_code == 200
    body = answer.json()
    expected = shapes_run.predict([photo], top=5)[0]
    assert body["model"] == "shapes" and len(body["predictions"]) == 1
    got = body["predictions"][0]
    assert got["path"] == "body" and got["label"] == expected["label"] == "red_square"
    assert got["probability"] == pytest.approx(expected["probability"], abs=1e-5)
    assert [name for name, _ in got["top"]] == [name for name, _ in expected["top"]]
    assert len(got["top"]) == 3  # three classes, fewer than top=5
    assert len(client.post("/predict?top=1", content=photo.read_bytes()).json()["predictions"][0]["top"]) == 1


def test_several_files_in_one_request_keep_their_order_and_names(client, shape_photos):
    files = [shape_photos[name][1] for name in ("blue_disk", "background_only", "red_square")]
    answer = client.post("/predict", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files])
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert [p["path"] for p in predictions] == [f.name for f in files]
    assert [p["label"] for p in predictions] == ["blue_disk", "background_only", "red_square"]


def test_a_body_over_the_limit_is_413_whether_its_length_is_declared_or_not(client):
    big = b"\0" * (10 * 2**20 + 1)
    declared = client.post("/predict", content=big, headers={"content-type": "image/png"})
    assert declared.status_code == 413 and "10,485,760 bytes" in declared.json()["detail"]

    def chunks():  # no Content-Length: the body is counted as it comes
        for _ in range(11):
            yield b"\0" * 2**20

    chunked = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
    assert chunked.status_code == 413 and "limit" in chunked.json()["detail"]
    just_under = client.post("/predict", content=b"\0" * (10 * 2**20 - 1000))
    assert just_under.status_code == 415  # read whole, then found not to be an image


def test_a_file_that_is_not_an_image_is_415_with_the_reason(client, shape_photos):
    answer = client.post("/predict", content=b"name,label\ncat,1\n", headers={"content-type": "image/png"})
    assert answer.status_code == 415
    assert answer.json()["detail"] == "body: cannot use as an image: not an image Pillow can read"
    good = shape_photos["red_square"][0]
    mixed = client.post("/predict", files=[("files", ("ok.png", good.read_bytes(), "image/png")),
                                           ("files", ("notes.txt", b"hello", "text/plain"))])
    assert mixed.status_code == 415 and mixed.json()["detail"].startswith("notes.txt: cannot use as an image")
    truncated = client.post("/predict", content=good.read_bytes()[:200])
    assert truncated.status_code == 415 and "damaged image" in truncated.json()["detail"]
    assert client.post("/predict", content=b"").status_code == 400


def test_damaged_uploads_are_refused_never_a_server_error(client, tmp_path):
    import random

    from conftest import write_image

    photo = write_image(tmp_path / "photo.jpg", (40, 90, 210), size=(120, 90), fmt="JPEG").read_bytes()
    rng = random.Random(0)
    damaged = [photo[:cut] for cut in range(0, len(photo), max(1, len(photo) // 40))]
    for _ in range(40):
        changed = bytearray(photo)
        for _ in range(rng.randint(1, 20)):
            changed[rng.randrange(len(changed))] = rng.randrange(256)
        damaged.append(bytes(changed))
    damaged += [rng.randbytes(rng.randint(1, 3000)) for _ in range(20)] + [png_claiming(70_000, 2)]
    for content in damaged:
        for path in ("/predict", "/gradcam"):
            answer = client.post(path, content=content)
            assert answer.status_code in (200, 400, 415), (path, answer.status_code, answer.text)
            if answer.status_code != 200:
                assert isinstance(answer.json()["detail"], str)


def test_a_decompression_bomb_is_400(client):
    answer = client.post("/predict", content=png_claiming(100_000, 100_000), headers={"content-type": "image/png"})
    assert answer.status_code == 400
    assert "decompression bomb" in answer.json()["detail"] and answer.json()["detail"].startswith("body:")
    assert client.post("/gradcam", content=png_claiming(100_000, 100_000)).status_code == 400


def test_an_unknown_model_is_404_naming_the_served_ones(client, shape_photos):
    photo = shape_photos["red_square"][0].read_bytes()
    for answer in (client.post("/predict?model=shapez", content=photo), client.post("/gradcam?model=shapez", content=photo),
                   client.get("/models/shapez")):
        assert answer.status_code == 404
        assert answer.json() == {"detail": "unknown model 'shapez': did you mean 'shapes'? known: shapes"}
    assert client.get("/nowhere").json() == {"detail": "Not Found"}


def test_gradcam_answers_a_png_of_the_upload_under_its_heatmap(client, shapes_run, shape_photos):
    photo = shape_photos["red_square"][0]
    answer = client.post("/gradcam", content=photo.read_bytes(), headers={"content-type": "image/png"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-label"] == answer.headers["x-explained"] == "red_square"
    assert answer.headers["x-layer"] == client.get("/models/shapes").json()["gradcam_layer"]
    assert float(answer.headers["x-probability"]) == pytest.approx(shapes_run.predict([photo])[0]["probability"], abs=1e-5)
    picture = Image.open(io.BytesIO(answer.content)).convert("RGB")
    assert picture.size == (256, 256)  # the 64x64 upload, drawn bigger, square as it was
    original = Image.open(photo).convert("RGB").resize(picture.size)
    assert sum(abs(a - b) for a, b in zip(ImageStat.Stat(picture).mean, ImageStat.Stat(original).mean)) > 5

    other = client.post("/gradcam?class=blue_disk", content=photo.read_bytes())
    assert other.status_code == 200 and other.headers["x-explained"] == "blue_disk"
    assert other.headers["x-label"] == "red_square" and other.content != answer.content
    wide = png_bytes(Image.open(photo).convert("RGB").resize((600, 300)))
    assert Image.open(io.BytesIO(client.post("/gradcam", content=wide).content)).size == (512, 256)  # its proportions

    unknown_class = client.post("/gradcam?class=green_star", content=photo.read_bytes())
    assert unknown_class.status_code == 400 and "red_square" in unknown_class.json()["detail"]
    unknown_layer = client.post("/gradcam?layer=conv9", content=photo.read_bytes())
    assert unknown_layer.status_code == 400 and "conv9" in unknown_layer.json()["detail"]
    two = client.post("/gradcam", files=[("files", ("a.png", photo.read_bytes())), ("files", ("b.png", photo.read_bytes()))])
    assert two.status_code == 400 and "one image" in two.json()["detail"]


def test_the_models_list_carries_each_card_from_the_run_files(client, shapes_run):
    body = client.get("/models").json()
    assert body["default"] == "shapes" and [card["name"] for card in body["models"]] == ["shapes"]
    card = body["models"][0]
    assert card == client.get("/models/shapes").json()
    assert card["classes"] == ["background_only", "blue_disk", "red_square"]
    assert card["test_accuracy"] == pytest.approx(shapes_run.metrics["test_accuracy"])
    assert card["recipe"]["name"] == "fast-mnist" and card["model"] == "small_convnet"
    assert card["epochs"] == 5 and card["input_shape"] == [3, 64, 64] and card["parameters"] > 1000
    data = json.loads((shapes_run.path / "data.json").read_text())
    assert card["training_data"]["source"] == "shapes"
    assert card["training_data"]["counts"]["train"]["total"] == sum(data["counts"]["train"].values())
    assert card["training_data"]["counts"]["test"]["per_class"] == data["counts"]["test"]
    assert card["trained"] == shapes_run.metrics["finished"]
    assert str(shapes_run.path.parent) not in json.dumps(body)  # no path of this machine is given away


def test_healthz_and_readyz_say_alive_and_ready_until_a_worker_stops(shapes_run, shape_photos):
    app = create_app([shapes_run.path])
    with TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "alive"}
        wait_until(lambda: app.state.models["shapes"].batcher.ready)  # its warm-up done
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert ready.json()["models"]["shapes"]["ready"] is True
        assert ready.json()["models"]["shapes"]["batches"] == 0  # the warm-up passes are not counted
        app.state.models["shapes"].batcher.stop()
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["models"]["shapes"]["running"] is False
        refused = client.post("/predict", content=shape_photos["red_square"][0].read_bytes())
        assert refused.status_code == 503 and "not running" in refused.json()["detail"]
        assert client.get("/healthz").status_code == 200


def held_worker(app, name: str = "shapes"):
    """Make the model's forward passes wait for the returned event; returns (event, sizes of the passes).
    Called once the worker has warmed up (its warm-up passes are not held)."""
    model = app.state.models[name]
    wait_until(lambda: model.batcher.ready)
    gate, sizes = threading.Event(), []
    forward = model.run.probabilities_and_unknown

    def held(images):
        sizes.append(len(images))
        gate.wait(60)
        return forward(images)

    model.run.probabilities_and_unknown = held  # the instance's, read by the worker at each batch
    return gate, sizes


def test_concurrent_requests_share_one_forward_pass(shapes_run, shape_photos):
    app = create_app([shapes_run.path], max_wait_ms=5)
    photos = [photo for name in ("red_square", "blue_disk", "background_only") for photo in shape_photos[name]]
    gate = threading.Event()
    try:
        with TestClient(app) as client, ThreadPoolExecutor(len(photos)) as pool:
            gate, sizes = held_worker(app)
            send = lambda photo: client.post("/predict", content=photo.read_bytes())  # noqa: E731
            first = pool.submit(send, photos[0])
            wait_until(lambda: sizes == [1])  # the worker is in its first pass
            rest = [pool.submit(send, photo) for photo in photos[1:]]
            wait_until(lambda: app.state.models["shapes"].batcher.queued == len(photos) - 1)
            gate.set()
            answers = [first.result()] + [future.result() for future in rest]
            stats = client.get("/readyz").json()["models"]["shapes"]
    finally:
        gate.set()
    assert sizes == [1, len(photos) - 1]  # nine requests, two forward passes (of 1 and 8: no padding)
    assert stats["batches"] == 2 and stats["images"] == len(photos)
    assert [a.json()["predictions"][0]["label"] for a in answers] == [p.parent.name for p in photos]


def test_batches_run_at_a_few_padded_sizes_and_answer_for_their_own_images(shapes_run, shape_photos):
    from smallvision.serve.models import buckets, padded

    assert buckets(32) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32] and buckets(20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]
    assert buckets(1) == [1]
    images = np.arange(3 * 2).reshape(3, 2)
    assert padded(images, 4).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]] and padded(images, 3) is images
    app = create_app([shapes_run.path])
    with TestClient(app) as client:
        gate, sizes = held_worker(app)
        gate.set()
        names = ("red_square", "blue_disk", "background_only", "red_square", "blue_disk")
        files = [shape_photos[name][index % 3] for index, name in enumerate(names)]
        answer = client.post("/predict", files=[("files", (f.name, f.read_bytes())) for f in files]).json()
    assert sizes == [6]  # five images in one request, run as six
    assert [p["label"] for p in answer["predictions"]] == list(names)


def test_a_batch_between_two_sizes_leaves_its_last_requests_for_the_next():
    from smallvision.serve.batcher import Batcher

    batcher = Batcher("m", lambda key, jobs, images: [None] * len(jobs), max_wait=0, sizes=[1, 2, 3, 4, 6, 8])
    batcher.thread = threading.current_thread()  # counts as running; next_batch is called by hand here
    futures = [batcher.submit(("predict",), np.zeros((1, 1, 2, 2), np.uint8)) for _ in range(5)]
    first = batcher.next_batch()
    assert [job.future for job in first] == futures[:4]  # 5 waiting: 4 now, not 5 padded to 6
    assert list(batcher.jobs)[0].future is futures[4] and batcher.queued == 1
    big = batcher.submit(("predict",), np.zeros((3, 1, 2, 2), np.uint8))
    second = batcher.next_batch()
    assert [job.future for job in second] == [futures[4], big]  # 1 + 3 = 4: a size, kept whole


def test_an_idle_worker_gives_the_memory_its_batches_freed_back_once(monkeypatch):
    from smallvision import heap
    from smallvision.serve import batcher as batcher_module

    releases = []
    monkeypatch.setattr(batcher_module, "release_free_memory", lambda: releases.append(time.monotonic()))
    monkeypatch.setattr(batcher_module.Batcher, "IDLE_SECONDS", 0.02)
    batcher = batcher_module.Batcher("m", lambda key, jobs, images: [None] * len(jobs), max_wait=0)
    def released(count: int) -> int:
        """How many releases there were once `count` came (or 10 s passed), then 0.3 s of idling later."""
        deadline = time.monotonic() + 10  # a loaded machine may run the worker late, never early
        while len(releases) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        return len(releases)

    batcher.start()
    try:
        assert released(1) == 1  # after the warm-up (none here), then no more while nothing runs
        for count in (2, 3):
            batcher.submit(("predict",), np.zeros((1, 1, 2, 2), np.uint8)).result(timeout=10)
            assert released(count) == count  # idle: one release after the batch, not one per idle moment
    finally:
        batcher.stop()
    heap.limit_arenas()  # the real ones run, on glibc or as no-ops elsewhere
    heap.release_free_memory()


def test_a_full_queue_is_503_with_retry_after(shapes_run, shape_photos):
    app = create_app([shapes_run.path], max_queue=1)
    photo = shape_photos["blue_disk"][0].read_bytes()
    gate = threading.Event()
    try:
        with TestClient(app) as client, ThreadPoolExecutor(2) as pool:
            gate, sizes = held_worker(app)
            running = pool.submit(client.post, "/predict", content=photo)
            wait_until(lambda: sizes == [1])
            waiting = pool.submit(client.post, "/predict", content=photo)
            wait_until(lambda: app.state.models["shapes"].batcher.queued == 1)
            refused = client.post("/predict", content=photo)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "try again" in refused.json()["detail"]
            gate.set()
            assert running.result().status_code == waiting.result().status_code == 200
    finally:
        gate.set()


def test_a_token_is_required_everywhere_but_healthz_and_the_page(shapes_run, shape_photos):
    with TestClient(create_app([shapes_run.path], token="s3cret")) as client:
        photo = shape_photos["red_square"][0].read_bytes()
        for method, path in (("get", "/models"), ("get", "/readyz"), ("post", "/predict"), ("post", "/gradcam")):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                answer = getattr(client, method)(path, headers=headers, **({"content": photo} if method == "post" else {}))
                assert answer.status_code == 401, (path, headers)
                assert "Bearer" in answer.json()["detail"] and answer.headers["www-authenticate"] == "Bearer"
        right = {"Authorization": "Bearer s3cret"}
        assert client.get("/models", headers=right).status_code == 200
        assert client.post("/predict", content=photo, headers=right).json()["predictions"][0]["label"] == "red_square"
        assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200
        assert "HTTPBearer" in json.dumps(client.get("/openapi.json").json()["components"]["securitySchemes"])


def test_served_names_come_from_directories_and_files(tmp_path):
    from smallvision.serve.loading import served_names

    paths = [tmp_path / "pets-1", tmp_path / "pets-1" / "model.onnx", tmp_path / "pets.onnx", tmp_path / "b" / "pets-1"]
    assert served_names(paths) == ["pets-1", "pets-1-2", "pets", "pets-1-3"]  # export's own name: by its run's


def test_runs_with_the_same_name_are_told_apart(shapes_run, shape_photos, tmp_path):
    copy = shutil.copytree(shapes_run.path, tmp_path / "elsewhere" / "shapes")
    with TestClient(create_app([shapes_run.path, copy])) as client:
        assert [card["name"] for card in client.get("/models").json()["models"]] == ["shapes", "shapes-2"]
        answer = client.post("/predict?model=shapes-2", content=shape_photos["blue_disk"][0].read_bytes())
        assert answer.json()["model"] == "shapes-2" and answer.json()["predictions"][0]["label"] == "blue_disk"


def test_the_page_and_its_files_come_from_the_server_alone(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    text = page.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', text):
        assert asset.startswith(("/", "data:")), asset  # nothing from another host
        if asset.startswith("/page/"):
            served = client.get(asset)
            assert served.status_code == 200 and "http://" not in served.text and "https://" not in served.text
    assert 'type="file"' in text and 'for="files"' in text and 'for="overlay"' in text


def test_every_kind_of_run_answers_predictions_and_gradcam(runs_of_every_kind, tmp_path):
    from conftest import write_image

    photo = write_image(tmp_path / "photo.jpg", (200, 60, 40), size=(120, 90), fmt="JPEG").read_bytes()
    digit = Image.new("L", (200, 150), 255)
    digit.paste(0, (90, 30, 104, 120))  # a dark "1" on white paper
    runs = list(runs_of_every_kind.values())
    with TestClient(create_app(runs)) as client:
        names = [card["name"] for card in client.get("/models").json()["models"]]
        assert names == [run.path.name for run in runs]
        for name, run in zip(names, runs):
            image = png_bytes(digit) if name == "mnist" else photo
            answer = client.post(f"/predict?model={name}", content=image)
            assert answer.status_code == 200, (name, answer.text)
            got = answer.json()["predictions"][0]
            assert got["label"] in run.class_names and len(got["top"]) == min(5, len(run.class_names))
            if len(run.class_names) <= 5:  # every class listed: the probabilities add up
                assert sum(p for _, p in got["top"]) == pytest.approx(1.0, abs=1e-3)
            cam = client.post(f"/gradcam?model={name}", content=image)
            assert cam.status_code == 200, (name, cam.text)
            assert cam.headers["x-label"] == got["label"]
            size = Image.open(io.BytesIO(cam.content)).size
            assert size == ((256, 256) if name == "mnist" else (256, 192)), name  # a framed digit as the model saw it
        assert client.post("/predict?model=mnist", content=png_bytes(digit)).json()["predictions"][0]["label"] == "1"


@pytest.fixture(scope="module")
def exports(shapes_run, runs_of_every_kind, tmp_path_factory) -> dict[str, Path]:
    """The shapes run (small_convnet) and the seed's MNIST run exported as .onnx files, by `export`."""
    base, done = tmp_path_factory.mktemp("exports"), {}
    for kind, run in (("small_convnet", shapes_run), ("mnist", runs_of_every_kind["mnist"])):
        done[kind] = base / f"{kind}-export.onnx"
        assert main(["export", str(run.path), "--format", "onnx", "-o", str(done[kind])]) == 0
    return done


def test_an_exported_onnx_file_is_served_as_its_run_answers_without_pytorch(shapes_run, shape_photos, exports):
    photos = [photo for name in ("red_square", "blue_disk", "background_only") for photo in shape_photos[name]]
    upload = [("files", (photo.name, photo.read_bytes())) for photo in photos]
    digit = Image.new("L", (200, 150), 255)
    digit.paste(0, (90, 30, 104, 120))  # a dark "1" on white paper: inverted and framed as the run reads it
    app = create_app([shapes_run.path, exports["small_convnet"], exports["mnist"]])
    served = app.state.models["small_convnet-export"]
    passes, forward = [], served.forward
    served.forward = lambda images: passes.append(len(images)) or forward(images)
    with TestClient(app) as client:
        run_card, export_card, _ = client.get("/models").json()["models"]
        assert [run_card["name"], export_card["name"]] == ["shapes", "small_convnet-export"]
        for field in ("classes", "model", "input_shape", "parameters", "test_accuracy", "val_accuracy", "epochs",
                      "train_seconds", "trained"):
            assert export_card[field] == run_card[field], field
        assert export_card["recipe"]["name"] == run_card["recipe"]["name"] and set(export_card) == set(run_card)
        assert export_card["exported_file"] == "small_convnet-export.onnx" and run_card["exported_file"] is None
        assert export_card["gradcam_layer"] is None and export_card["gradcam_layers"] == []
        by_run = client.post("/predict?model=shapes", files=upload).json()["predictions"]
        by_export = client.post("/predict?model=small_convnet-export", files=upload).json()["predictions"]
        assert [p["label"] for p in by_export] == [p["label"] for p in by_run] == [p.parent.name for p in photos]
        # the run answers in bf16 where this CPU computes it natively (2e-3 away here), the export in fp32
        assert max(abs(a["probability"] - b["probability"]) for a, b in zip(by_run, by_export)) <= 1e-2
        stats = client.get("/readyz").json()["models"]
        assert stats["shapes"]["max_batch"] == 32 and stats["small_convnet-export"]["max_batch"] == 1
        assert passes == [1] * (1 + len(photos))  # the warm-up's, then the request's nine, one at a time
        cam = client.post("/gradcam?model=small_convnet-export", content=photos[0].read_bytes())
        assert cam.status_code == 400 and "serve its run directory for heatmaps" in cam.json()["detail"]
        assert client.post("/predict?model=mnist-export", content=png_bytes(digit)).json()["predictions"][0]["label"] == "1"
    script = ("import json, sys\n"
              "from fastapi.testclient import TestClient\n"
              "from smallvision.serve import create_app\n"
              f"with TestClient(create_app([{str(exports['small_convnet'])!r}])) as client:\n"
              f"    answer = client.post('/predict', content=open({str(photos[0])!r}, 'rb').read()).json()\n"
              "print(json.dumps({'label': answer['predictions'][0]['label'], 'torch': 'torch' in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"label": "red_square", "torch": False}


def test_serve_with_a_bad_run_is_one_line_and_exit_2_before_binding(tmp_path, monkeypatch, capsys):
    def never(*args):
        raise AssertionError("bound before the runs were checked")

    monkeypatch.setattr(serve_server, "bind", never)
    assert main(["serve", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("smallvision: error: ") and "missing" in error
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text("{}")
    assert main(["serve", str(tmp_path / "half")]) == 2
    assert "not a smallvision run" in capsys.readouterr().err


def test_listening_beyond_loopback_warns_and_says_what_the_token_does(shapes_run, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(serve_server.Server, "run", lambda self, sockets=None: ran.append(sockets))
    real_bind = serve_server.bind
    monkeypatch.setattr(serve_server, "bind", lambda host, port: real_bind("127.0.0.1", 0))  # not really 0.0.0.0
    monkeypatch.delenv("SMALLVISION_TOKEN", raising=False)
    assert main(["serve", str(shapes_run.path), "--host", "0.0.0.0", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert re.match(r"serving shapes at http://0\.0\.0\.0:\d+/ ", out) and len(ran) == 1
    assert "warning: listening on 0.0.0.0" in err and "--token" in err
    monkeypatch.setenv("SMALLVISION_TOKEN", "abc")
    assert main(["serve", str(shapes_run.path), "--host", "0.0.0.0", "--port", "0"]) == 0
    assert "needs the token" in capsys.readouterr().err
    assert main(["serve", str(shapes_run.path), "--port", "0"]) == 0
    assert "warning" not in capsys.readouterr().err  # loopback: nothing to warn about
    assert serve_server.is_loopback("::1") and serve_server.is_loopback("localhost")
    assert not serve_server.is_loopback("192.168.1.4")


DROP_AND_PASTE = """data => {
    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
    const transfer = () => { const t = new DataTransfer(); t.items.add(new File([bytes], "disk.png", {type: "image/png"})); return t; };
    document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer(), bubbles: true, cancelable: true}));
    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer(), bubbles: true, cancelable: true}));
}"""


class RealServer(Listening):
    """`python -m smallvision serve RUN... --port 0` as its own process, and where it listens."""

    def __init__(self, runs: list[Path], *extra: str):
        super().__init__(["serve", *runs, "--port", "0", *extra],
                         r"serving .* at (http://127\.0\.0\.1:(\d+)/) \(API docs: \S+docs\); Ctrl-C stops$")
        self.base, self.port = self.found.group(1), int(self.found.group(2))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_real_server_answers_then_stops_cleanly_on_a_signal(shapes_run, shape_photos, signum):
    import httpx

    server = RealServer([shapes_run.path])
    try:
        with httpx.Client(base_url=server.base, timeout=30) as http:
            assert http.get("healthz").json() == {"status": "alive"}
            wait_until(lambda: http.get("readyz").status_code == 200)  # once the worker has warmed up
            answer = http.post("predict", content=shape_photos["red_square"][0].read_bytes(),
                               headers={"content-type": "image/png"})
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "red_square"
            if signum == signal.SIGINT:  # a chunked body (no Content-Length) past the limit
                refused = http.post("predict", content=(b"\0" * 2**20 for _ in range(12)))
                assert refused.status_code == 413 and "limit" in refused.json()["detail"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass  # still listening after a refused body
    finally:
        status, stderr = server.stop(signum)
    assert status == 0, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


def test_the_page_classifies_a_chosen_photo_at_laptop_and_phone_width(shapes_run, shape_photos, tmp_path):
    playwright = playwright_or_skip()
    other = shutil.copytree(shapes_run.path, tmp_path / "b" / "shapes")  # two models: the selector shows
    photo = shape_photos["red_square"][0]
    server = RealServer([shapes_run.path, other])
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                for width, name in ((1280, "laptop"), (390, "phone")):
                    page = browser.new_page(viewport={"width": width, "height": 900})
                    problems, elsewhere = watch_page(page, server.base)
                    page.goto(server.base)
                    page.wait_for_selector("#card dd.big")
                    card = page.inner_text("#card")
                    assert f"{shapes_run.metrics['test_accuracy']:.4f}" in card and "fast-mnist" in card
                    assert "background_only, blue_disk, red_square" in card
                    assert page.is_visible("#model") and page.eval_on_selector_all("#model option", "o => o.length") == 2
                    page.select_option("#model", "shapes-2")
                    assert "shapes-2" in page.inner_text("#card")

                    page.set_input_files("#files", str(photo))
                    page.wait_for_selector(".result .label strong")
                    assert page.inner_text(".result .label strong") == "red_square"
                    assert page.eval_on_selector_all(".result .bars li", "items => items.length") == 3
                    page.wait_for_selector(".result img.heat:not([hidden])")
                    assert page.eval_on_selector(".result img.heat", "i => i.complete && i.naturalWidth") == 256
                    assert page.is_hidden(".result img.photo")
                    assert "shapes-2" in page.inner_text(".result figcaption")
                    page.click("label[for=overlay]")  # the toggle: back to the photo
                    assert page.is_hidden(".result img.heat") and page.is_visible(".result img.photo")
                    page.click("label[for=overlay]")
                    assert page.is_visible(".result img.heat")

                    if width == 1280:  # dropped and pasted images are classified as chosen ones are
                        page.evaluate(DROP_AND_PASTE, base64.b64encode(shape_photos["blue_disk"][0].read_bytes()).decode())
                        page.wait_for_function("() => document.querySelectorAll('.result .label strong').length == 3")
                        labels = page.eval_on_selector_all(".result .label strong", "s => s.map(e => e.textContent)")
                        assert labels == ["blue_disk", "blue_disk", "red_square"]  # newest first
                        page.wait_for_function("() => document.querySelectorAll('.result img.heat:not([hidden])').length == 3")
                        page.click("#camera")  # Chromium's own test camera: a frame of it classified as a photo
                        page.wait_for_function("() => document.querySelector('#video').videoWidth > 0")
                        page.click("#snap")
                        page.wait_for_function("() => document.querySelectorAll('.result .label strong').length == 4")
                        assert page.inner_text(".result figcaption").startswith("camera-1.jpg")
                        # a test pattern is no shape: "None of these" where the run's unknown scorer says so
                        assert page.inner_text(".result .label strong") in ("background_only", "blue_disk", "red_square",
                                                                            "None of these")
                        page.click("#camera-off")
                        assert page.is_hidden("#camera-box")
                        assert page.evaluate("document.querySelector('#video').srcObject") is None

                    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing off the side
                    widest = page.evaluate("Math.max(...[...document.querySelectorAll('body *')]"
                                           ".map(e => e.getBoundingClientRect().right))")
                    assert widest <= width + 0.5, widest
                    reached = []
                    for _ in range(8):  # the controls, in order, by keyboard, each with a visible focus ring
                        page.keyboard.press("Tab")
                        focused = page.evaluate("[document.activeElement.id, "
                                                "getComputedStyle(document.activeElement).outlineStyle, "
                                                "getComputedStyle(document.querySelector('label[for=files]'))"
                                                ".outlineStyle]")
                        reached.append(focused[0])
                        if focused[0] == "files":
                            assert focused[2] != "none"  # the hidden input's label shows the focus
                        elif focused[0] in ("model", "overlay", "clear"):
                            assert focused[1] != "none", focused
                    assert {"model", "files", "overlay", "clear"} <= set(reached), reached
                    shot = tmp_path / f"{name}.png"
                    page.screenshot(path=str(shot), full_page=True)
                    image = Image.open(shot).convert("L")
                    assert image.width == width and ImageStat.Stat(image).stddev[0] > 20
                    assert len(image.getcolors(1 << 16) or range(1 << 16)) > 50
                    assert problems == [] and elsewhere == []
                    page.close()
            finally:
                browser.close()
    finally:
        status, stderr = server.stop()
    assert status == 0, stderr


def test_the_page_serves_an_exported_file_without_asking_for_grad_cam(shape_photos, exports):
    playwright = playwright_or_skip()
    server = RealServer([exports["small_convnet"]])
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                problems, asked = [], []
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
                page.on("request", lambda request: asked.append(request.url))
                page.goto(server.base)
                page.wait_for_selector("#card dd.big")
                card = page.inner_text("#card")
                assert "small_convnet-export.onnx (ONNX, without Grad-CAM)" in card and "fast-mnist" in card
                assert " parameters, input 64×64×3" in card and "null" not in card and "undefined" not in card
                page.set_input_files("#files", str(shape_photos["blue_disk"][0]))
                page.wait_for_selector(".result .label strong")
                assert page.inner_text(".result .label strong") == "blue_disk"
                assert page.eval_on_selector_all(".result .heat-note", "notes => notes.length") == 0
                assert not [url for url in asked if "/gradcam" in url] and problems == []
            finally:
                browser.close()
    finally:
        status, stderr = server.stop()
    assert status == 0, stderr


def test_the_page_asks_for_the_token_and_then_works(shapes_run, shape_photos):
    playwright = playwright_or_skip()
    server = RealServer([shapes_run.path], "--token", "open-sesame")
    try:
        with playwright.sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page(viewport={"width": 390, "height": 800})
                page.goto(server.base)
                page.wait_for_selector("#token-form:not([hidden])")
                assert page.evaluate("document.activeElement.id") == "token"  # focus goes where the answer is typed
                assert "Bearer" in page.inner_text("#status")
                page.fill("#token", "open-sesame")
                page.keyboard.press("Enter")
                page.wait_for_selector("#card dd.big")
                assert page.is_hidden("#token-form") and page.inner_text("#single-model") == "Model: shapes"
                assert page.is_hidden("#picker")  # one model: no selector
                page.set_input_files("#files", str(shape_photos["blue_disk"][0]))
                page.wait_for_selector(".result img.heat:not([hidden])")
                assert page.inner_text(".result .label strong") == "blue_disk"
            finally:
                browser.close()
    finally:
        status, stderr = server.stop(signal.SIGTERM)
    assert status == 0, stderr
