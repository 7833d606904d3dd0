"""The repository is self-contained: what its text cites is in the repository.

A clone has only what git tracks: no project workspace beside it, none of the notes that
the project started from. So no tracked file may cite those notes, and every section of
docs/method.md that the code cites must exist.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"

# Notes outside the repository that earlier versions cited. Built from pieces so this file
# does not match its own patterns.
OUTSIDE = re.compile("|".join([
    r"\b" + "DESIGN" + r"(\.md)?\b",      # the old method brief (sections now in docs/method.md)
    r"\b" + "STYLE" + r"\.md\b",          # the old style notes
    # The workspace beside the project. Its data folder is only an optional source of
    # training photos (`python -m chimle data photos`), whose absence the code reports.
    r"\.\./" + "shared" + r"(?!/data\b)",
    "/work/" + "shared",
]))
UNTRACKED_DIRS = {".git", ".venv", "venv", "runs", "data", "__pycache__", ".pytest_cache"}
SKIPPED_SUFFIXES = {".safetensors", ".png", ".jpg", ".jpeg", ".pt", ".gif", ".webp", ".zip"}


def _tracked_text_files() -> list[Path]:
    """Tracked files (or, outside a git checkout, the files of the tree) that hold text."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True,
                                timeout=60).stdout.decode().split("\0")
        paths = [REPO / name for name in listed if name]
    except (OSError, subprocess.SubprocessError):
        # Not a git checkout (an unpacked archive): the tree, without what a run adds to it.
        paths = [p for p in REPO.rglob("*") if not set(p.relative_to(REPO).parts) & UNTRACKED_DIRS]
    files = []
    for path in paths:
        if path.suffix.lower() in SKIPPED_SUFFIXES or not path.is_file():
            continue
        head = path.read_bytes()[:8192]
        if b"\0" not in head:
            files.append(path)
    return files


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _method_anchors() -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", METHOD.read_text(), re.M)
    slugs = [_github_slug(h) for h in headings]
    assert len(slugs) == len(set(slugs)), "two headings of docs/method.md share an anchor"
    return set(slugs)


def test_github_slugs():
    assert _github_slug("Inference via optimisation") == "inference-via-optimisation"
    assert _github_slug("The distance: LPIPS") == "the-distance-lpips"
    assert _github_slug("FID and KID") == "fid-and-kid"


def test_no_tracked_file_cites_notes_outside_the_repository():
    this_file = Path(__file__).resolve()
    hits = []
    for path in _tracked_text_files():
        if path.resolve() == this_file:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not hits, ("these lines point outside the repository; cite docs/method.md instead:\n"
                      + "\n".join(hits))


def test_every_cited_section_of_the_method_brief_exists():
    anchors = _method_anchors()
    cited: dict[str, set[str]] = {}
    files = set(_tracked_text_files()) | set(REPO.glob("chimle/**/*.py")) | set(REPO.glob("docs/*.md"))
    for path in files:
        for match in re.finditer(r"method\.md#([\w-]+)", path.read_text(errors="replace")):
            cited.setdefault(match.group(1), set()).add(str(path.relative_to(REPO)))
    # In-page links of docs/method.md itself: (#anchor).
    for match in re.finditer(r"\]\(#([\w-]+)\)", METHOD.read_text()):
        cited.setdefault(match.group(1), set()).add("docs/method.md")
    assert cited, "nothing cites docs/method.md: the test would pass vacuously"
    missing = {anchor: sorted(users) for anchor, users in cited.items() if anchor not in anchors}
    assert not missing, f"cited sections that docs/method.md does not have: {missing}"


def test_the_readme_links_the_method_brief():
    assert "(docs/method.md)" in (REPO / "README.md").read_text()
