"""The README documents the studio's API as it is: its endpoint table names exactly the
endpoints a launched app offers, and its gradio_client example works against one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

import app
from chimle.studio.handlers import StudioSettings
from chimle.studio.security import TrainingPolicy

from .studio_helpers import one_torch_thread, photo, served_app, tiny_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### Using the studio from Python"
# The example connects here (`python app.py`'s address); the test puts its own app's address
# in its place and changes nothing else.
EXAMPLE_URL = "http://127.0.0.1:7860/"
PHOTO_SIZE = (80, 64)  # (width, height); Save gives the result at this size
# Gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")
single_thread = pytest.fixture(scope="module")(one_torch_thread)


def _section() -> str:
    """The README's API subsection, up to the next heading of its level or above."""
    text = README.read_text()
    assert SECTION in text, f"the README has no {SECTION!r}"
    return re.split(r"^#{1,3} ", text.split(SECTION, 1)[1], maxsplit=1, flags=re.M)[0]


def _documented_endpoints() -> list[str]:
    """Every `/name` in the first column of the section's table."""
    rows = [line for line in _section().splitlines() if line.startswith("| `/")]
    return [name for row in rows for name in re.findall(r"`(/\w+)`", row.split("|")[1])]


@pytest.fixture(scope="module")
def served(tmp_path_factory, single_thread):
    """The app over a tiny colourization model and the repository's example photos, which the
    examples endpoints need to exist; training off."""
    root = tmp_path_factory.mktemp("api")
    checkpoints = root / "checkpoints"
    checkpoints.mkdir()
    tiny_checkpoint(checkpoints, "colourization", levels=3)
    settings = StudioSettings(checkpoints=checkpoints, runs=root / "runs", data_root=root / "data",
                              assets=app.ROOT / "assets", policy=TrainingPolicy(False, "off for tests"))
    assert app.find_examples(settings.assets), "assets/ has no example photos"
    with served_app(settings) as url:
        yield url


def test_the_readme_table_lists_exactly_the_apps_public_endpoints(served):
    documented = _documented_endpoints()
    assert len(documented) == len(set(documented)), "an endpoint is listed twice"
    api = Client(served, verbose=False).view_api(print_info=False, return_format="dict")
    offered = set(api["named_endpoints"])
    assert not api["unnamed_endpoints"]
    assert set(documented) == offered, (f"not in the README: {sorted(offered - set(documented))}; "
                                        f"not in the app: {sorted(set(documented) - offered)}")


def test_the_readme_client_example_saves_the_full_size_result(served, tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) == 1, "the API section should have one Python example"
    code = blocks[0]
    assert code.count(EXAMPLE_URL) == 1
    # The example reads photo.jpg and writes result.png in the folder it runs in.
    monkeypatch.chdir(tmp_path)
    photo("astronaut", PHOTO_SIZE).save("photo.jpg", quality=90)
    exec(compile(code.replace(EXAMPLE_URL, served), str(README), "exec"), {})
    with Image.open(tmp_path / "result.png") as result:
        result.load()
        assert result.format == "PNG" and result.size == PHOTO_SIZE and result.mode == "RGB"
    assert f"({PHOTO_SIZE[0]}×{PHOTO_SIZE[1]}, the photo's own size" in capsys.readouterr().out
