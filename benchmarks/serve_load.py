"""Benchmark: `smallvision serve` under load, on loopback: does micro-batching pay, and does memory stay put?

Starts `smallvision serve RUN` as a real uvicorn process on a free loopback port, then
1. 16 concurrent clients x 50 requests (800), one photo per request (the raw JPEG as the body);
2. 1 client sending the same 800 requests one after another.
For each: errors (bar: none), p50/p95 latency, requests/s, and the mean batch the server ran (its
/readyz counts forward passes); the ratio of the two throughputs (bar: at least 2x, from batching, where
the server batches: not an .onnx file, served an image a pass).
The server's resident memory (VmRSS in /proc/PID/status) at rest (a second after the requests) after 50
warm-up requests and after the 800 concurrent ones that follow (bar: within 50 MB), and right after
each load. Then SIGINT: exit status 0.

    .venv/bin/python benchmarks/serve_load.py /work/runs14/catsdogs-finetune
        [--photo PATH] [--clients 16] [--requests 50] [--max-batch N] [--max-wait-ms 5]
    .venv/bin/python benchmarks/serve_load.py RUN RUN.onnx     # the run, then its export, and the ratios

The photo defaults to the first file of ../shared/datasets/cats_and_dogs_small/test/cats/. Only the
standard library and httpx are used here; the server is its own process. Results also go to
benchmarks/results/serve_load-TIME.json.
"""

import argparse
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "datasets" / "cats_and_dogs_small" / "test" / "cats"
BATCHING_BAR = 2.0  # concurrent throughput over sequential
MEMORY_BAR_MB = 50.0
START_TIMEOUT = 180  # seconds for the server to load its runs and listen
SETTLE_SECONDS = 1.0  # without requests, before memory is read at rest (the server trims its heap when idle)


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(run: str, args) -> tuple[subprocess.Popen, str, Path]:
    log = Path(tempfile.mkstemp(prefix="serve-load-", suffix=".log")[1])
    command = [sys.executable, "-m", "smallvision.cli", "serve", run, "--port", "0", "--max-wait-ms",
               str(args.max_wait_ms), "--max-queue", str(args.max_queue)]
    if args.max_batch:
        command += ["--max-batch", str(args.max_batch)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in server.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=START_TIMEOUT)
    except queue.Empty:
        server.kill()
        sys.exit(f"the server did not start within {START_TIMEOUT} s; its log: {log}")
    found = re.search(r"at (http://\S+/) ", first)
    if not found:
        server.kill()
        sys.exit(f"the server said {first!r}, not where it listens; its log:\n{log.read_text()}")
    return server, found.group(1), log


def wait_ready(base: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(base + "readyz", timeout=5)
            if answer.status_code == 200:
                return answer.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{base}readyz did not answer 200 within {timeout} s")


def served_batches(base: str) -> tuple[int, int, float]:
    models = httpx.get(base + "readyz", timeout=10).json()["models"]
    return (sum(m["batches"] for m in models.values()), sum(m["images"] for m in models.values()),
            sum(m["busy_seconds"] for m in models.values()))


def load(base: str, photo: bytes, clients: int, requests: int) -> dict:
    """`clients` threads, each sending `requests` requests one after another; latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    labels: set[str] = set()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            for _ in range(requests):
                start = time.perf_counter()
                try:
                    answer = http.post("predict", content=photo, headers={"content-type": "image/jpeg"})
                    ok = answer.status_code == 200
                    detail = "" if ok else f"{answer.status_code} {answer.text[:200]}"
                    label = answer.json()["predictions"][0]["label"] if ok else None
                except (httpx.HTTPError, ValueError, KeyError) as err:
                    ok, detail, label = False, f"{type(err).__name__}: {err}", None
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if ok:
                        labels.add(label)
                    else:
                        errors.append(detail)

    batches_before, images_before, busy_before = served_batches(base)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    batches_after, images_after, busy_after = served_batches(base)
    ordered = sorted(latencies)
    batches = batches_after - batches_before
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "labels": sorted(labels), "seconds": round(wall, 3), "requests_per_second": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * statistics.median(ordered), 2),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "forward_passes": batches, "mean_batch": round((images_after - images_before) / max(batches, 1), 2),
            "ms_per_pass": round(1000 * (busy_after - busy_before) / max(batches, 1), 2),
            "worker_busy": round((busy_after - busy_before) / wall, 3)}  # the share of the time the model ran


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="what to serve: a run directory or an exported .onnx "
                        "file; several are served one after another, each compared with the first")
    parser.add_argument("--photo", help="the image every request sends (default: the first cat of the shared test set)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--max-batch", type=int, help="default: serve's own (32 for a run, 1 for an .onnx file)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-queue", type=int, default=256)
    args = parser.parse_args()
    photo_path = Path(args.photo) if args.photo else min(PHOTOS.iterdir())
    results = [measure(run, photo_path, args) for run in args.runs]
    if len(results) > 1:
        first = results[0]
        print(f"each against the first ({args.runs[0]}), in this benchmark run:")
        for run, result in zip(args.runs[1:], results[1:]):
            print(f"  {run}: {compared(result, first, 'concurrent', 'requests_per_second', 'requests/s')}; "
                  f"{compared(result, first, 'sequential', 'requests_per_second', 'requests/s')}; "
                  f"{compared(result, first, 'sequential', 'p50_ms', 'ms p50')}; memory at rest "
                  f"{result['memory_at_rest_mb']:.0f} against {first['memory_at_rest_mb']:.0f} MB")
    sys.exit(0 if all(result["passed"] for result in results) else 1)


def compared(one: dict, other: dict, phase: str, figure: str, unit: str) -> str:
    mine, theirs = one[phase][figure], other[phase][figure]
    return f"{phase} {mine:.1f} against {theirs:.1f} {unit} ({mine / theirs:.2f}x)"


def measure(run: str, photo_path: Path, args) -> dict:
    """The whole benchmark for one served model, printed; its figures, and whether they met the bars."""
    photo = photo_path.read_bytes()
    total = args.clients * args.requests
    server, base, log = start_server(run, args)
    try:
        max_batch = next(iter(wait_ready(base)["models"].values()))["max_batch"]
        print(f"serving {run} at {base} (process {server.pid}, batches of at most {max_batch}); photo {photo_path} "
              f"({len(photo):,} bytes)")
        memory = {}
        # Memory is compared at rest: after the first 50 requests and after the 800 concurrent ones that follow,
        # each followed by a second without requests. Read in the middle of the load instead, it says how many
        # images were in flight at that instant (20 to 90 MB apart from one run to the next), not whether
        # anything stays behind; the readings right after the loads are printed too.
        warm_up = load(base, photo, 10, 5)  # the first 50 requests, 10 clients at a time
        memory["after_50"] = resident_mb(server.pid)
        time.sleep(SETTLE_SECONDS)
        memory["after_50_at_rest"] = resident_mb(server.pid)
        concurrent = load(base, photo, args.clients, args.requests)
        memory[f"after_{total}_concurrent"] = resident_mb(server.pid)
        time.sleep(SETTLE_SECONDS)
        memory[f"after_{total}_concurrent_at_rest"] = resident_mb(server.pid)
        sequential = load(base, photo, 1, total)
        memory[f"after_{total}_sequential"] = resident_mb(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            status = server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            status = "killed after 30 s"
    stderr = log.read_text()
    os.unlink(log)

    ratio = concurrent["requests_per_second"] / sequential["requests_per_second"]
    growth = memory[f"after_{total}_concurrent_at_rest"] - memory["after_50_at_rest"]
    errors = warm_up["errors"] + concurrent["errors"] + sequential["errors"]
    for name, phase in (("concurrent", concurrent), ("sequential", sequential)):
        print(f"{name:>10}: {phase['clients']:>2} client(s), {phase['requests']} requests, {phase['errors']} errors, "
              f"p50 {phase['p50_ms']:.1f} ms, p95 {phase['p95_ms']:.1f} ms, {phase['requests_per_second']:.1f} "
              f"requests/s, {phase['forward_passes']} forward passes (mean batch {phase['mean_batch']:.1f}, "
              f"{phase['ms_per_pass']:.1f} ms each, the worker busy {phase['worker_busy']:.0%} of the time), "
              f"labels {phase['labels']}")
        for error in phase["first_errors"]:
            print(f"            error: {error}")
    print(f"zero errors: {'yes' if errors == 0 else f'NO ({errors})'}")
    batched = max_batch > 1  # the bar is batching's: an .onnx file is served an image a pass (models.py says why)
    print(f"throughput, concurrent over sequential: {ratio:.2f}x " + (
        f"(bar: at least {BATCHING_BAR:g}x) {'ok' if ratio >= BATCHING_BAR else 'BELOW THE BAR'}" if batched
        else "(no bar: one image a pass)"))
    print("server memory (VmRSS): " + ", ".join(f"{key.replace('_', ' ')} {value:.1f} MB" for key, value in memory.items())
          + f"; growth at rest, from the first 50 to {total} more requests, {growth:+.1f} MB (bar: within "
          f"{MEMORY_BAR_MB:g} MB) "
          + ("ok" if abs(growth) <= MEMORY_BAR_MB else "OVER THE BAR"))
    print(f"server exit status after SIGINT: {status}" + ("" if status == 0 else f"\n{stderr[-2000:]}")
          + (" (a traceback on its stderr)" if "Traceback" in stderr else ""))
    from keras_baseline import save_results  # this folder's shared helper; imports nothing heavy

    print(save_results("serve_load", {"run": run, "photo": str(photo_path), "concurrent": concurrent,
                                      "sequential": sequential, "ratio": round(ratio, 2), "memory_mb": memory,
                                      "memory_growth_mb": round(growth, 1), "exit_status": status,
                                      "max_batch": max_batch, "max_wait_ms": args.max_wait_ms}))
    return {"concurrent": concurrent, "sequential": sequential,
            "memory_at_rest_mb": memory[f"after_{total}_concurrent_at_rest"],
            "passed": errors == 0 and (ratio >= BATCHING_BAR or not batched) and abs(growth) <= MEMORY_BAR_MB and status == 0}


if __name__ == "__main__":
    main()
