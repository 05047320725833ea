"""`create_app`: the FastAPI application `serve` runs: the page at `/`, the JSON API (documented at
`/docs`), `/healthz` and `/readyz`.

The event loop only moves bytes: decoding runs in a bounded thread pool, the networks in each model's
worker thread (batcher.py), and a request awaits its batch's result. Every error is JSON {"detail": ...}.
Nothing here imports PyTorch: a server of exported `.onnx` files runs without it (models.py).
"""

import asyncio
import contextlib
import hmac
import os
from pathlib import Path
from urllib.parse import quote

import anyio
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from smallvision.errors import SmallvisionError, unknown_name
from smallvision.images import DamagedImage
from smallvision.predictions import class_index
from smallvision.serve.batcher import NotRunning, QueueFull
from smallvision.serve.limits import BodyLimit
from smallvision.serve.loading import load_models
from smallvision.serve.models import PREDICT, ServedModel

PAGE = Path(__file__).parent / "page"
MAX_BODY = 10 * 2**20
MAX_FILES = 64  # images in one request
RETRY_AFTER = "1"  # seconds; a full queue drains in about a batch's time
# The page fetches nothing from anywhere else: everything it loads comes from this server.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "one or more image files (PNG, JPEG, ...)"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}, "description": "one image as the body"},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


class Prediction(BaseModel):
    path: str  # the uploaded file's name ("body" for a raw body), as `predict` names the file
    label: str
    probability: float
    top: list[tuple[str, float]]  # the most probable classes, most probable first
    # where the model has an unknown scorer: true for "none of these" (label: the class it would have been)
    unknown: bool | None = None
    unknown_score: float | None = None


class Predictions(BaseModel):
    model: str
    predictions: list[Prediction]


def create_app(runs: list, *, device: str = "auto", max_batch: int | None = None, max_wait_ms: float = 5.0,
               max_queue: int = 256, max_body: int = MAX_BODY, token: str | None = None,
               decode_threads: int | None = None) -> FastAPI:
    """The application serving `runs` (run directories, exported `.onnx` files, or Runs already loaded), each
    by its name. A run that cannot be loaded raises SmallvisionError here, before anything listens.
    With `token`, every route but the page, the docs and /healthz wants `Authorization: Bearer TOKEN`."""
    if not runs:
        raise SmallvisionError("serve needs at least one run directory or exported .onnx file")
    models = load_models(runs, device, max_batch, max_wait_ms / 1000, max_queue)
    default = next(iter(models))
    decoders = anyio.CapacityLimiter(decode_threads or max(2, os.cpu_count() or 1))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        for model in models.values():
            model.batcher.start()
        try:
            yield
        finally:
            for model in models.values():
                model.batcher.stop()

    app = FastAPI(title="smallvision serve", lifespan=lifespan,
                  description="Image classifiers trained with smallvision: predictions, Grad-CAM heatmaps and "
                              "model cards. The page at `/` uses this API.")
    app.state.models = models
    app.add_middleware(BodyLimit, limit=max_body)

    bearer = HTTPBearer(auto_error=False, description="the --token the server was started with")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "this server wants `Authorization: Bearer TOKEN`, the token it was started "
                                     "with (--token or SMALLVISION_TOKEN)", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)] if token else []

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):  # JSON like every other answer, not plain text
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    def served(name: str | None) -> ServedModel:
        if name is None:
            return models[default]
        if name not in models:
            raise HTTPException(404, str(unknown_name("model", name, list(models))))  # the nearest served names
        return models[name]

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(PAGE / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                          "X-Content-Type-Options": "nosniff"})

    app.mount("/page", StaticFiles(directory=PAGE), name="page")

    @app.get("/healthz", tags=["health"], summary="the process is alive (no token needed)")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"], dependencies=guarded,
             summary="every model is loaded and its worker running, warmed up (503 otherwise)")
    async def readyz():
        ready = all(model.batcher.ready for model in models.values())
        body = {"status": "ready" if ready else "not ready",
                "models": {name: model.batcher.stats() for name, model in models.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/models", tags=["models"], dependencies=guarded, summary="the served models and their cards")
    async def list_models():
        return {"default": default, "models": [model.card for model in models.values()]}

    @app.get("/models/{name}", tags=["models"], dependencies=guarded, summary="one model's card")
    async def one_model(name: str):
        return served(name).card

    @app.post("/predict", tags=["inference"], dependencies=guarded, response_model=Predictions,
              response_model_exclude_none=True,
              openapi_extra={"requestBody": UPLOAD_BODY},
              summary="classify one or more images: `predict`'s answer for each",
              description="Send image files as multipart/form-data (field `files`, several allowed), or one image "
                          "as the request body. 413: body over the limit; 415: a file that is not an image; "
                          "400: a decompression bomb; 404: unknown model; 503: the queue is full (Retry-After).")
    async def predict(request: Request, model: str | None = Query(None, description="default: the first served"),
                      top: int = Query(5, ge=1, description="how many classes to list in `top`")):
        chosen = served(model)
        files = await uploads(request)
        probabilities = await infer(chosen, files, PREDICT)
        return {"model": chosen.name,
                "predictions": [chosen.prediction(name, row, top) for (name, _), row in zip(files, probabilities)]}

    @app.post("/gradcam", tags=["inference"], dependencies=guarded, openapi_extra={"requestBody": UPLOAD_BODY},
              response_class=Response, responses={200: {"content": {"image/png": {}},
                                                         "description": "the image under its heatmap"}},
              summary="Grad-CAM: the image under a heatmap of where the evidence for a class lies (PNG)",
              description="One image, as the body or as multipart field `files`. The predicted class is explained "
                          "unless `class` names another. Headers: X-Label and X-Probability (the prediction), "
                          "X-Explained (the class), X-Layer; names percent-encoded.")
    async def gradcam(request: Request, model: str | None = Query(None, description="default: the first served"),
                      class_name: str | None = Query(None, alias="class", description="default: the predicted one"),
                      layer: str | None = Query(None, description="default: the model card's gradcam_layer")):
        chosen = served(model)
        layer = layer or chosen.default_layer
        if layer is None:
            raise HTTPException(400, chosen.no_gradcam)
        if layer not in chosen.map_layers:
            raise HTTPException(400, f"model {chosen.name!r} has no layer {layer!r} with a feature map; its layers "
                                     f"with maps are: {', '.join(chosen.map_layers)}")
        explained = None
        if class_name is not None:
            try:
                explained = class_index(chosen.class_names, class_name)
            except SmallvisionError as err:
                raise HTTPException(400, str(err)) from None
        files = await uploads(request)
        if len(files) != 1:
            raise HTTPException(400, f"Grad-CAM takes one image a request, got {len(files)}")
        images = []
        (probabilities, heatmaps, classes, used), = await infer(chosen, files, ("gradcam", layer), explained, images)
        from smallvision.serve.picture import gradcam_png  # Pillow and matplotlib, on the first Grad-CAM

        png = await anyio.to_thread.run_sync(gradcam_png, files[0][1], images[0], heatmaps[0], chosen.framed,
                                             limiter=decoders)
        probabilities = chosen.class_probabilities(probabilities)
        predicted = int(probabilities[0].argmax())
        names = chosen.class_names
        return Response(png, media_type="image/png", headers={
            "X-Label": quote(names[predicted]), "X-Probability": f"{float(probabilities[0][predicted]):.6f}",
            "X-Explained": quote(names[int(classes[0])]), "X-Layer": quote(used), "Cache-Control": "no-store"})

    async def infer(chosen: ServedModel, files: list[tuple[str, bytes]], key: tuple, extra=None,
                    decoded: list | None = None):
        """The images decoded (in a thread) and run in the model's next batch: the handler's result for them.
        `decoded`, when given, receives the model inputs."""
        with chosen.batcher.incoming():  # the worker may wait a moment for these images
            images = await anyio.to_thread.run_sync(decode_all, chosen, files, limiter=decoders)
            if decoded is not None:
                decoded.extend(images)
            try:
                future = chosen.batcher.submit(key, images, extra)
            except (QueueFull, NotRunning) as err:
                raise HTTPException(503, str(err), headers={"Retry-After": RETRY_AFTER}) from None
        result = await asyncio.wrap_future(future)
        return result if key == PREDICT else [result]

    return app


async def uploads(request: Request) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image a request carries: multipart files, or the body itself."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=MAX_FILES)
        try:
            files = [(item.filename or key, await item.read()) for key, item in form.multi_items()
                     if isinstance(item, UploadFile)]
        finally:
            await form.close()
        if not files:
            raise HTTPException(400, "no image in the request: send image files as multipart/form-data field "
                                     "`files`, or one image as the body")
        return files
    body = await request.body()
    if not body:
        raise HTTPException(400, "no image in the request: send one image as the body, or image files as "
                                 "multipart/form-data field `files`")
    return [("body", body)]


def decode_all(model: ServedModel, files: list[tuple[str, bytes]]) -> np.ndarray:
    """uint8 [N, ...] in the model's input layout; 415 for a file that is not an image, 400 for a bomb."""
    images = []
    for name, content in files:
        try:
            images.append(model.decode(content))
        except DamagedImage as err:
            bomb = "decompression bomb" in str(err)
            raise HTTPException(400 if bomb else 415, f"{name}: cannot use as an image: {err}") from None
    return np.stack(images)
