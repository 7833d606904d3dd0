"""The studio's render thread: every render on one thread, results and errors to the caller;
long jobs on a thread of their own that ends with the job."""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
import time

import gradio as gr
import pytest

from chimle.studio.render_thread import RenderThread, iterate_as_job, run_as_job

REQUEST = contextvars.ContextVar("request", default="none")


def test_every_call_from_any_thread_runs_on_one_thread_with_the_callers_context():
    renders = RenderThread()
    seen = []

    def render(value):
        seen.append((threading.get_ident(), REQUEST.get()))
        return value * 2

    def caller(value):
        REQUEST.set(f"user {value}")
        assert renders.run(render, value) == value * 2

    threads = [threading.Thread(target=caller, args=(value,)) for value in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({ident for ident, _ in seen}) == 1 and seen[0][0] not in {t.ident for t in threads}
    assert sorted(request for _, request in seen) == [f"user {value}" for value in range(6)]


def test_a_render_that_calls_another_runs_it_directly_and_errors_reach_the_caller():
    renders = RenderThread()
    assert renders.run(lambda: renders.run(lambda: threading.get_ident())) == renders.run(threading.get_ident)

    def broken():
        raise ValueError("render failed")

    with pytest.raises(ValueError, match="render failed"):
        renders.run(broken)
    assert renders.run(lambda: "still serving") == "still serving"


def test_idle_seconds_are_zero_while_work_is_queued_or_running_and_count_from_its_end():
    renders = RenderThread()
    started, release = threading.Event(), threading.Event()

    def work():
        started.set()
        release.wait(5)

    running = renders.submit(work)
    queued = renders.submit(lambda: None)
    started.wait(5)
    time.sleep(0.05)
    assert renders.idle_seconds() == 0.0
    release.set()
    running.result(5)
    queued.result(5)
    time.sleep(0.2)
    idle = renders.idle_seconds()
    assert 0.15 <= idle < 5
    renders.run(lambda: None)
    assert renders.idle_seconds() < idle  # counted again from the new work's end


def test_stream_yields_what_the_work_shows_then_raises_its_error():
    renders = RenderThread()
    threads = set()

    def work(show):
        threads.add(threading.get_ident())
        show(1)
        show(2)
        raise ValueError("render failed")

    stream = renders.stream(work)
    assert next(stream) == 1 and next(stream) == 2
    with pytest.raises(ValueError, match="render failed"):
        next(stream)
    assert list(renders.stream(lambda show: show("only"))) == ["only"]
    assert threads == {renders.run(threading.get_ident)}


class _Handlers:
    def select(self, state: int, evt: gr.SelectData, progress: gr.Progress = gr.Progress()) -> int:
        return state + evt.index

    def level(self, level: int, state: int) -> tuple[int, int]:
        return level, state

    def streams(self, state: int):
        yield state


def test_a_wrapped_handler_keeps_the_signature_gradio_reads():
    renders, handlers = RenderThread(), _Handlers()
    select = renders.wrap(handlers.select)
    assert inspect.signature(select) == inspect.signature(handlers.select)
    assert gr.utils.get_type_hints(select)["evt"] is gr.SelectData  # how Gradio finds event data
    level = renders.wrap(functools.partial(handlers.level, 2))
    assert list(inspect.signature(level).parameters) == ["state"] and level(5) == (2, 5)
    with pytest.raises(TypeError, match="streams"):
        renders.wrap(handlers.streams)


def _wait_until_gone(ident: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ident not in {thread.ident for thread in threading.enumerate()}:
            return True
        time.sleep(0.01)
    return False


def test_a_job_runs_on_a_thread_of_its_own_that_has_ended_when_it_returns():
    renders = RenderThread()
    render_thread = renders.run(threading.get_ident)
    REQUEST.set("user 1")
    ident, request = run_as_job(lambda: (threading.get_ident(), REQUEST.get()))
    assert ident not in {threading.get_ident(), render_thread} and request == "user 1"
    assert ident not in {thread.ident for thread in threading.enumerate()}  # already joined

    def broken():
        raise ValueError("save failed")

    with pytest.raises(ValueError, match="save failed"):
        run_as_job(broken)


def test_an_iterated_job_advances_on_one_thread_which_ends_with_the_job():
    threads = []

    def steps():
        for step in range(3):
            threads.append(threading.get_ident())
            yield step

    assert list(iterate_as_job(steps())) == [0, 1, 2]
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
    assert _wait_until_gone(threads[0])


def test_stopping_an_iterated_job_cleans_up_on_its_thread_and_errors_reach_the_caller():
    where = {}

    def steps():
        where["steps"] = threading.get_ident()
        try:
            while True:
                yield "step"
        finally:
            where["cleanup"] = threading.get_ident()

    job = iterate_as_job(steps())
    assert next(job) == "step" and next(job) == "step"
    job.close()  # a Stop
    assert _wait_until_gone(where["steps"]) and where["cleanup"] == where["steps"]

    def broken():
        yield "first"
        raise ValueError("IvO failed")

    job = iterate_as_job(broken())
    assert next(job) == "first"
    with pytest.raises(ValueError, match="IvO failed"):
        next(job)
