"""Micro-batching: the requests that arrive within a few milliseconds of each other share one forward pass.

One worker thread per model owns the model: predictions and Grad-CAM run there, one batch at a time, so
the event loop never waits on the network and no two threads run it at once (Grad-CAM hangs hooks
on its layers while it runs). A batch is the first waiting job and every later job of the same kind
(same key) that still fits under `max_batch` images. The worker waits up to `max_wait` seconds for more
only when there is company: other jobs were waiting with the first, or requests are on their way
(decoding, see `incoming`). A lone client pays no wait at all; busy clients, whose next requests come
back a moment after each batch, are gathered into one batch instead of splitting into two halves that
take turns (16 clients made batches of 8 and 8 that way, where one batch of 16 costs less per image). The queue is bounded in images: past `max_queue`, `submit` refuses at once (QueueFull,
which the API answers 503 with Retry-After) instead of letting latency grow without end. Before its first
batch the worker runs `warm_up` (the model's own, see models.py); until then it queues but is not ready.
Idle for a moment after a batch, it gives the memory the batches freed back to the system (heap.py).
"""

import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from smallvision.heap import release_free_memory


class QueueFull(Exception):
    """The model's queue holds as many images as it may; try again shortly."""


class NotRunning(Exception):
    """The model's worker is not running (not started yet, stopped, or ended by an error)."""


@dataclass
class Job:
    key: Any  # jobs with equal keys may share a batch (the kind of work, and e.g. Grad-CAM's layer)
    images: np.ndarray  # uint8 [N, ...], in the model's input layout
    extra: Any = None  # whatever the handler needs per job (a class to explain)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


# handler(key, jobs, images of all jobs concatenated) -> one result per job, in order
Handler = Callable[[Any, list[Job], np.ndarray], list[Any]]


class Batcher:
    IDLE_SECONDS = 0.05  # no job for this long after a batch: the worker gives the freed memory back (heap.py)

    def __init__(self, name: str, handler: Handler, max_batch: int = 32, max_wait: float = 0.005,
                 max_queue: int = 256, warm_up: Callable[[], None] | None = None, sizes: list[int] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait not negative")
        self.name, self.handler = name, handler
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.jobs: deque[Job] = deque()
        self.queued = 0  # images waiting in `jobs`
        self.coming = 0  # requests decoding their images, about to submit
        self.batches = 0  # forward passes run (one per batch)
        self.images = 0  # images run through them
        self.busy = 0.0  # seconds spent in the handler: over the wall time, how busy the worker is
        self.freed_since_idle = True  # batches (or the warm-up) have freed memory since the heap was last trimmed
        self.condition = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.warm_up = warm_up
        self.sizes = sorted(sizes or [])  # the batch sizes the handler runs without padding (models.buckets)
        self.warm = threading.Event()
        self.failure: BaseException | None = None

    @property
    def running(self) -> bool:
        """The worker takes jobs (it may still be warming up)."""
        return self.thread is not None and self.thread.is_alive() and not self.stopping

    @property
    def ready(self) -> bool:
        """Running, and warmed up: the next job is run as soon as it comes."""
        return self.running and self.warm.is_set()

    def start(self) -> None:
        self.stopping = False
        self.warm.clear()
        self.thread = threading.Thread(target=self.work, name=f"smallvision-serve-{self.name}", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in hand, refuse what is still queued, and end the worker."""
        with self.condition:
            self.stopping = True
            left, self.queued = list(self.jobs), 0
            self.jobs.clear()
            self.condition.notify_all()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(NotRunning(f"model {self.name!r} is shutting down"))
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    @contextlib.contextmanager
    def incoming(self):
        """Held by a request while it decodes its images: the worker may wait a little for it."""
        with self.condition:
            self.coming += 1
        try:
            yield
        finally:
            with self.condition:
                self.coming -= 1
                self.condition.notify_all()

    def submit(self, key: Any, images: np.ndarray, extra: Any = None) -> concurrent.futures.Future:
        """Queue `images` (uint8 [N, ...], the model's layout) for the next batch of its key; the future gets
        the handler's result for this job. A job bigger than the queue is still taken when the queue is empty."""
        job = Job(key, images, extra)
        with self.condition:
            if not self.running:
                raise NotRunning(f"model {self.name!r} is not running"
                                 + (f" (its worker ended: {self.failure})" if self.failure else ""))
            if self.queued and self.queued + len(images) > self.max_queue:
                raise QueueFull(f"model {self.name!r} has {self.queued} images waiting (the most it queues is "
                                f"{self.max_queue}); try again shortly")
            self.jobs.append(job)
            self.queued += len(images)
            self.condition.notify_all()
        return job.future

    def next_batch(self) -> list[Job] | None:
        """The jobs of the next batch, or None once stopping."""
        with self.condition:
            while not self.jobs and not self.stopping:
                if self.freed_since_idle and not self.condition.wait(self.IDLE_SECONDS):
                    release_free_memory()  # idle: what the last batches freed goes back to the system
                    self.freed_since_idle = False
                elif not self.freed_since_idle:
                    self.condition.wait()
            if self.stopping:
                return None
            batch = [self.jobs.popleft()]
            count = len(batch[0].images)
            company = bool(self.jobs)
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                for job in list(self.jobs):  # the same kind of work, as long as it fits
                    if job.key == batch[0].key and count + len(job.images) <= self.max_batch:
                        self.jobs.remove(job)
                        batch.append(job)
                        count += len(job.images)
                left = deadline - time.monotonic()
                if self.stopping or not (company or self.coming) or left <= 0 or count >= self.max_batch:
                    break
                self.condition.wait(left)
            count = self.trimmed(batch, count)
            self.queued -= count
            return batch

    def trimmed(self, batch: list[Job], count: int) -> int:
        """Back to the head of the queue go the last jobs past the largest of `sizes` that `count` reaches, as
        long as that size is still filled: a batch of 13 runs as 12 now and 1 first next time, rather than
        padded to 16 (a quarter of its work wasted). Called holding the condition; the images kept."""
        fitting = max((size for size in self.sizes if size <= count), default=count)
        while count > fitting and len(batch) > 1 and count - len(batch[-1].images) >= fitting:
            job = batch.pop()
            self.jobs.appendleft(job)
            count -= len(job.images)
        return count

    def work(self) -> None:
        try:
            if self.warm_up is not None:
                self.warm_up()
            self.warm.set()
            while (batch := self.next_batch()) is not None:
                self.run_batch(batch)
        except BaseException as err:  # noqa: BLE001 -- a dead worker must show in /readyz, not vanish
            self.failure = err
            raise

    def run_batch(self, batch: list[Job]) -> None:
        # A request whose client went away has cancelled its future: its images are not worth a forward pass,
        # and a future once running can no longer be cancelled under the result being set.
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        images = batch[0].images if len(batch) == 1 else np.concatenate([job.images for job in batch])
        started = time.perf_counter()
        try:
            results = self.handler(batch[0].key, batch, images)
        except Exception as err:  # noqa: BLE001 -- the batch's requests get the error; the worker goes on
            for job in batch:
                job.future.set_exception(err)
            return
        finally:
            self.freed_since_idle = True
            self.batches += 1
            self.images += len(images)
            self.busy += time.perf_counter() - started
        for job, result in zip(batch, results):
            job.future.set_result(result)

    def stats(self) -> dict:
        return {"running": self.running, "ready": self.ready, "queued": self.queued, "batches": self.batches, "images": self.images,
                "busy_seconds": round(self.busy, 3),
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait * 1000, "max_queue": self.max_queue}
