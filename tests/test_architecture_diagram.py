"""The README's architecture diagram (docs/architecture.png) is generated from docs/architecture.py and kept true.

- The committed image is exactly what the script draws now, so it cannot go stale.
- Every step the builder names (``"Label" >>`` in inference_pipeline/builder.py: ScoreEvents, create_pipeline and
  the functions it calls) is drawn under that label. Plumbing is drawn as one box each and left out here: the
  per-sink writes ``Write...To_<sink>`` (the sinks box) and the counters ``Report...`` (the live metrics box).
- The script's layout check catches an overlap (it is what keeps the image legible).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import matplotlib
import PIL
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "architecture.py"
IMAGE = REPO / "docs" / "architecture.png"
BUILDER = REPO / "inference_pipeline" / "builder.py"

_LABEL = re.compile(r"""(?<![\w"'])(f?)(["'])([^"'\n]+)\2\s*>>""")
REGENERATE = ".venv/bin/python docs/architecture.py"


@pytest.fixture(scope="module")
def diagram():
    """docs/architecture.py loaded as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("architecture_diagram", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def builder_labels(source: str) -> list[tuple[str, bool]]:
    """(label, is an f-string) for each ``"Label" >> transform`` in the source, in order."""
    return [(label, prefix == "f") for prefix, _, label in _LABEL.findall(source)]


def is_plumbing(label: str) -> bool:
    return (label.startswith("Write") and "To_" in label) or label.startswith("Report")


def test_committed_image_is_what_the_script_draws(diagram, tmp_path):
    fresh = tmp_path / "architecture.png"
    diagram.render(fresh)
    assert IMAGE.is_file(), f"{IMAGE.relative_to(REPO)} is missing: run {REGENERATE}"
    assert fresh.read_bytes() == IMAGE.read_bytes(), (
        f"{IMAGE.relative_to(REPO)} differs from what {SCRIPT.relative_to(REPO)} draws "
        f"(matplotlib {matplotlib.__version__}, Pillow {PIL.__version__}): run {REGENERATE} and commit the image")


def test_every_named_step_of_the_builder_is_drawn(diagram):
    labels = builder_labels(BUILDER.read_text(encoding="utf-8"))
    steps = [label for label, _ in labels if not is_plumbing(label)]
    assert {"ReadEvents", "ScoreEvents", "ParseEvents", "RunInference", "TrackIncidents"} <= set(steps), (
        f"the label parser missed the builder's steps; it found {steps}")
    templated = [label for label, templated in labels if templated and not is_plumbing(label)]
    assert not templated, f"steps labelled from a template cannot be matched with the diagram: {templated}"
    missing = [label for label in steps if label not in diagram.STEPS]
    assert not missing, (
        f"named steps of {BUILDER.relative_to(REPO)} not drawn in {SCRIPT.relative_to(REPO)}: {missing}; "
        f"add them to layout() and run {REGENERATE}")


def test_label_parser_reads_plain_and_templated_labels():
    source = '''raws = p | "ReadEvents" >> read\nx = y | 'Score' >> S()\nz | f"Write{t}To_{name}" >> w\n'''
    assert builder_labels(source) == [("ReadEvents", False), ("Score", False), ("Write{t}To_{name}", True)]
    assert is_plumbing("WriteParseDeadLettersTo_{name}") and is_plumbing("ReportDuplicates")
    assert not is_plumbing("Score")


def test_layout_check_catches_overlapping_text(diagram, monkeypatch):
    original = diagram.layout

    def crowded():
        found = original()
        first = found.boxes[0]
        found.boxes.append(dataclasses.replace(first, key="on-top", x=first.x + 0.2, y=first.y + 0.05))
        return found

    monkeypatch.setattr(diagram, "layout", crowded)
    with matplotlib.rc_context():
        _, problems = diagram.draw()
    assert any("overlap" in problem for problem in problems), problems


def test_readme_architecture_section_shows_the_image():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    assert "docs/architecture.png" in section and REGENERATE in section
