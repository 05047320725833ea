"""Running the application: load the runs, bind the socket, say where, serve with uvicorn until Ctrl-C or
SIGTERM, then stop cleanly (exit status 0)."""

import contextlib
import ipaddress
import signal
import socket
import sys
import threading

import uvicorn

from smallvision.errors import SmallvisionError


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn raises the signal again once it has shut down, so that the process ends as the signal would
        # end it (killed by SIGTERM, KeyboardInterrupt for SIGINT); a server stopped on purpose ends with 0.
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, frame):
            if self.should_exit and signum == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for open connections
            self.should_exit = True

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket at host:port (port 0: any free one), or one clear error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise SmallvisionError(f"--host {host}: not an address this machine can listen on ({err.strerror})") from None
    family, kind, protocol, _, address = infos[0]
    # The protocol too (IPPROTO_TCP, not 0): asyncio sets TCP_NODELAY only on sockets that name it, and
    # without it every answer waits ~40 ms for the client's delayed ACK.
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(address)
        listener.listen(2048)
    except OSError as err:
        listener.close()
        hint = "; choose another --port (0: any free one)" if err.errno in (98, 48) else ""
        raise SmallvisionError(f"cannot listen on {host}:{port} ({err.strerror or err}){hint}") from None
    listener.set_inheritable(True)
    return listener


def url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(runs: list, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, device: str = "auto",
          max_batch: int | None = None, max_wait_ms: float = 5.0, max_queue: int = 256, access_log: bool = False) -> None:
    """Serve `runs` until stopped. Every run is loaded (and a bad one refused) before the socket is bound."""
    from smallvision import heap
    from smallvision.serve.app import create_app

    heap.limit_arenas()  # before any request thread allocates (heap.py says why)

    app = create_app(runs, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                     token=token)
    listener = bind(host, port)
    port = listener.getsockname()[1]
    names = ", ".join(app.state.models)
    print(f"serving {names} at {url(host, port)} (API docs: {url(host, port)}docs); Ctrl-C stops", flush=True)
    if not is_loopback(host):
        print(f"warning: listening on {host}, not loopback: other machines can reach this server"
              + ("; every request but /healthz and the page needs the token" if token else
                 "; anyone who can reach it can use it. Pass --token (or set SMALLVISION_TOKEN) to require one"),
              file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_graceful_shutdown=10, lifespan="on")
    try:
        Server(config).run(sockets=[listener])
    finally:
        listener.close()
