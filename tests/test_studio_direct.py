"""The slider edits' own pre- and postprocessing (`chimle/studio/direct.py`) against Gradio's.

What the studio sends for an event registered without Gradio's processing must be what Gradio
would have sent: checked here on a real app served on a port, one event of each kind with the
same handler, inputs and outputs, the responses read from Gradio's event stream.
"""

from __future__ import annotations

import json
import urllib.request

import gradio as gr
import pytest
from PIL import Image

from chimle.studio.direct import NO_HOPS, preprocessed, serialised, without_hops


def _stream(api: str, name: str, data: list) -> list[str]:
    request = urllib.request.Request(f"{api}/call/{name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{api}/call/{name}/{event_id}") as stream:
        return [line.decode().strip() for line in stream if line.startswith(b"data:")]


def test_an_event_without_gradios_processing_sends_what_gradio_would(tmp_path):
    image = tmp_path / "result.png"
    Image.new("RGB", (32, 24), (200, 120, 30)).save(image)
    gr.set_static_paths([str(tmp_path)])
    with gr.Blocks() as demo:
        state, checkbox = gr.State(None), gr.Checkbox()
        sliders = [gr.Slider(-3, 3, step=0.01, label=f"s{index}") for index in range(3)]
        result, strip, compare, hidden, status = (gr.Image(), gr.Gallery(), gr.ImageSlider(),
                                                  gr.ImageSlider(visible=False), gr.Markdown())
        outputs = [state, result, strip, compare, hidden, status]

        def updates(values):
            yield {result: str(image), status: "coarse"}
            yield {state: values, result: str(image), strip: [(str(image), "1"), (str(image), "2")],
                   compare: (str(image), str(image)), hidden: gr.update(value=None, visible=False),
                   status: f"values {values}"}

        def processed_by_gradio(_state, _renormalise, *values):
            yield from updates(list(values))

        def processed_here(_state, _renormalise, *values):
            for update in updates(preprocessed(sliders, values)):
                yield serialised(update)

        inputs = [state, checkbox, *sliders]
        gr.on([slider.input for slider in sliders], processed_by_gradio, inputs, outputs, api_name="gradio")
        gr.on([slider.input for slider in sliders], processed_here, inputs, outputs, api_name="here", **NO_HOPS)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        api = f"{url.rstrip('/')}/gradio_api"
        values = [True, 0.123, -2.5, 1]  # one value at its bound
        by_gradio, here = _stream(api, "gradio", values), _stream(api, "here", values)
        assert len(by_gradio) == 3 and "values [0.123, -2.5, 1]" in by_gradio[-1]  # two responses, then complete
        assert here == by_gradio
    finally:
        demo.close()


def test_preprocessed_values_keep_the_sliders_bounds():
    with gr.Blocks():
        slider = gr.Slider(0, 1, label="Blend")
    assert preprocessed([slider], [0.5]) == [0.5]
    with pytest.raises(gr.Error, match="greater than maximum"):
        preprocessed([slider], [2])


def test_without_hops_hands_the_handler_gradios_values_and_sends_its_payloads(tmp_path):
    image = tmp_path / "sample.png"
    Image.new("RGB", (8, 8)).save(image)
    with gr.Blocks():
        state, count, result = gr.State(None), gr.Number(precision=0), gr.Image()
    seen = []

    def handler(session, number):
        seen.append((session, number))
        return {state: session, result: str(image)}

    handle = without_hops(handler, [state, count])
    session = object()
    updates = handle(session, 3.0)
    assert seen == [(session, 3)] and isinstance(seen[0][1], int)  # precision 0: an int, as Gradio gives
    assert updates[state] is session and updates[result]["path"] == str(image)
