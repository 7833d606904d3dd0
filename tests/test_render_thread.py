"""The studio's render thread: every render on one thread, results and errors to the caller."""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading

import gradio as gr
import pytest

from chimle.studio.render_thread import RenderThread

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
