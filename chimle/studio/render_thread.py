"""One thread runs the studio's renders, one after another.

Why not Gradio's own threads: torch parallelises a CPU op with OpenMP, which gives every
thread that starts parallel work its own team of worker threads. Gradio runs each event on
whichever thread of its pool is free, so consecutive edits land on different threads, and
each switch wakes (or creates) another team that competes for the same cores with the one
that just finished and is still spinning. Measured on two cores: the same level edit took
115 ms when every call came from one thread and 203 ms when calls alternated between two.
Handing every render to one long-lived thread keeps one team, warm. Renders of several
users then take turns instead of splitting the cores, which costs nothing on a machine
whose cores one render already fills.

A second team also slows the whole process while it lives: once another thread has run
one parallel torch op (a model load, a painted canvas turned into a tensor, a save), every
render takes about 1.8 times as long, on every thread (102 -> 182 ms per level-1 edit,
measured 2026-12-02). libgomp spins between parallel ops only while the process's OpenMP
threads are no more than its cores (`gomp_managed_threads`; past that it throttles the spin
to a thousand rounds and sleeps, and OMP_WAIT_POLICY / GOMP_SPINCOUNT cannot change that),
and a team lives as long as the thread that made it, so one on a pooled Gradio worker
lingers. Hence two rules for the studio's torch work:
- quick work runs here, on the render thread (`RENDERS.run`, `RENDERS.wrap`);
- long jobs (saving at full size, IvO, colour hints, batches) run on a thread of their own
  that ends with the job (`run_as_job`, `iterate_as_job`), so that they do not hold up other
  users' edits for seconds or minutes, and their team goes with them: once the job is over,
  renders are at full speed again.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

THREAD_NAME = "chimle-render"
JOB_THREAD_NAME = "chimle-job"

_DONE = object()


class RenderThread:
    """Runs callables on one worker thread, each caller waiting for its own result."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        self._thread_ident: int | None = None
        self._pending = 0  # submitted and not yet finished
        self._last_finished = time.monotonic()
        self._count_lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue `fn(*args, **kwargs)`; it sees the caller's context variables (Gradio's
        progress and request context live there)."""
        context = contextvars.copy_context()
        with self._count_lock:
            self._pending += 1
        return self._executor.submit(self._remember_thread, context.run, fn, *args, **kwargs)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` on the render thread (directly when already on it, so a
        render that calls another cannot wait for itself); its exception is raised here."""
        if self.on_thread():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    def stream(self, work: Callable[[Callable[[Any], None]], Any]) -> Iterator[Any]:
        """Run `work(show)` on the render thread and yield, as they come, the values it passes
        to `show`; then raise its exception, if any.

        The work always runs to its end, even if the caller stops listening, so the
        session's state is whole whatever the page does.
        """
        shown: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                work(shown.put)
            finally:
                shown.put(_DONE)

        finished = self.submit(run)
        while (value := shown.get()) is not _DONE:
            yield value
        finished.result()  # raises the work's error

    def on_thread(self) -> bool:
        return self._thread_ident == threading.get_ident()

    def idle_seconds(self) -> float:
        """How long the thread has had nothing to do (0 while work is queued or running)."""
        with self._count_lock:
            return 0.0 if self._pending else time.monotonic() - self._last_finished

    def _remember_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._thread_ident = threading.get_ident()
        try:
            return fn(*args, **kwargs)
        finally:
            with self._count_lock:
                self._pending -= 1
                self._last_finished = time.monotonic()

    def wrap(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """`handler` as an event handler that runs on the render thread, with the same
        signature (Gradio reads it to pass progress trackers and event data)."""
        if inspect.isgeneratorfunction(handler) or inspect.isgeneratorfunction(
                getattr(handler, "func", None)):
            raise TypeError("a generator handler streams; call RenderThread.stream inside it instead")

        @functools.wraps(handler)
        def on_render_thread(*args: Any, **kwargs: Any) -> Any:
            return self.run(handler, *args, **kwargs)

        return on_render_thread


def run_as_job(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` on a new thread that ends when it returns (the module docstring
    says why); it sees the caller's context variables, and its exception is raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=JOB_THREAD_NAME) as job:
        return job.submit(contextvars.copy_context().run, fn, *args, **kwargs).result()


def iterate_as_job(steps: Iterator[Any]) -> Iterator[Any]:
    """Advance `steps` (a long job's generator) on a new thread, yielding each step here; the
    thread ends with the job (the module docstring says why).

    Closing this iterator (a Stop) closes `steps` on that thread too, where its work ran,
    and the thread then ends; the closer does not wait for it, since it may be Gradio's
    event loop dropping a cancelled job.
    """
    job = ThreadPoolExecutor(max_workers=1, thread_name_prefix=JOB_THREAD_NAME)
    context = contextvars.copy_context()
    try:
        while (step := job.submit(context.run, next, steps, _DONE).result()) is not _DONE:
            yield step
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            job.submit(context.run, close)
        job.shutdown(wait=False)  # its queued close still runs; then the thread ends


# One per process: the point is that every render shares one thread.
RENDERS = RenderThread()
