"""`smallvision serve`: trained runs behind an HTTP API and a page (FastAPI on uvicorn).

    from smallvision.serve import create_app      # the ASGI application, for any ASGI server or a TestClient
    app = create_app(["runs/pets-1"], max_batch=32, max_wait_ms=5)

app.py: the routes; batcher.py: the micro-batching worker per model; models.py: the face of what is served
and how its batches run, whichever engine (served_run.py: a run directory in PyTorch, with Grad-CAM;
served_onnx.py: an exported .onnx file in onnxruntime); loading.py: loading them, each under its name;
cards.py: a model's card; picture.py: the Grad-CAM PNG; limits.py: the body size limit; server.py: binding,
uvicorn and signals; page/: the page's static files.
"""


def create_app(*args, **kwargs):
    from smallvision.serve.app import create_app as create  # FastAPI is imported when a server is made

    return create(*args, **kwargs)
