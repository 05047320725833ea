"""The request body's size limit, enforced before anything reads the body into memory.

A Content-Length over the limit is answered 413 at once, without reading a byte of the body. A body
without one (chunked) or one that lies is counted as it arrives: past the limit, reading it raises
BodyTooLarge, an HTTPException, so the route that was reading answers 413 through FastAPI's own handler,
and whatever was buffered is dropped with the request.
"""

import json

from starlette.exceptions import HTTPException


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over this server's limit of {limit:,} bytes "
                              f"({limit / 2**20:g} MB); send smaller images, or fewer in one request")


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most `limit` bytes."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await answer(send, 400, "Content-Length is not a number")
            if length > self.limit:
                return await answer(send, 413, BodyTooLarge(self.limit).detail)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        return await self.app(scope, counted, send)


async def answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}, ensure_ascii=False).encode()  # as the application's own answers
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
