"""The architecture is checked, not just described.

- ``test_import_contracts``: the ``[tool.importlinter]`` contracts in pyproject.toml hold (``lint-imports``).
- ``test_readme_architecture_tree_matches_packages``: the folder/module tree in the README's "## Architecture"
  section names exactly the real package folders and modules.
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "training", "model_handlers", "inference_pipeline")

_MODULE = re.compile(r"(?<![\w.])((?:[\w.-]+/)*\w+\.py)(?!\w)")
_FOLDER = re.compile(r"^[\w.-]+(?:/[\w.-]+)*/$")
_STRIP = "()[]{}`'\",;:"


def test_import_contracts():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} not found: install the test extras (import-linter)")
    done = subprocess.run(
        [str(lint_imports), "--no-logo", "--no-cache", str(REPO / "pyproject.toml")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, (
        f"lint-imports exited {done.returncode}; a layering contract is broken:\n"
        f"{done.stdout}\n{done.stderr}"
    )


def architecture_block(readme: str) -> list[str]:
    """The lines of the first fenced code block under the "## Architecture" heading (before the next ## heading)."""
    lines = readme.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "## Architecture")
    except StopIteration:
        raise AssertionError('README.md has no "## Architecture" heading') from None
    block, inside = [], False
    for line in lines[start + 1:]:
        if line.strip().startswith("```"):
            if inside:
                return block
            inside = True
            continue
        if inside:
            block.append(line)
        elif line.startswith("## "):
            break
    raise AssertionError('no complete ``` fenced block between "## Architecture" and the next ## heading')


def parse_tree(block: list[str]) -> tuple[set[str], dict[str, set[str]], list[str]]:
    """(folders, modules by folder, modules found before any folder line) named in the tree.

    Folders are tokens ending in "/" (repo-relative, e.g. ``inference_pipeline/connectors/mqtt/``). A line whose
    first token is a folder is a folder line; a ``name.py`` belongs to the most recent folder line (the same line
    included). A path-qualified ``dir/name.py`` belongs to ``dir/``.
    """
    folders: set[str] = set()
    modules: dict[str, set[str]] = defaultdict(set)
    orphans: list[str] = []
    current: str | None = None
    for line in block:
        tokens = [token.strip(_STRIP) for token in line.split()]
        for position, token in enumerate(tokens):
            if _FOLDER.match(token):
                folders.add(token)
                if position == 0:
                    current = token
        for name in _MODULE.findall(line):
            folder, _, module = name.rpartition("/")
            if folder:
                modules[folder + "/"].add(module)
            elif current is None:
                orphans.append(module)
            else:
                modules[current].add(module)
    return folders, dict(modules), orphans


def real_tree() -> tuple[set[str], dict[str, set[str]]]:
    """Every folder holding Python under the packages, and its non-``__init__`` modules."""
    folders: set[str] = set()
    modules: dict[str, set[str]] = defaultdict(set)
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO)
            if any(part == "__pycache__" or part.startswith(".") for part in relative.parts):
                continue
            folder = relative.parent.as_posix() + "/"
            folders.add(folder)
            if path.name != "__init__.py":
                modules[folder].add(path.name)
    return folders, dict(modules)


def tree_problems(readme: str) -> list[str]:
    listed_folders, listed_modules, orphans = parse_tree(architecture_block(readme))
    real_folders, real_modules = real_tree()
    all_real = {(folder, name) for folder, names in real_modules.items() for name in names}

    def where_else(name: str) -> str:
        homes = sorted(folder for folder, module in all_real if module == name)
        return f" (it is in {', '.join(homes)})" if homes else ""

    problems: list[str] = []
    for folder in sorted(listed_folders):
        if not (REPO / folder).is_dir():
            problems.append(f"listed folder does not exist: {folder}")
    for folder in sorted(listed_modules):
        for name in sorted(listed_modules[folder]):
            if not (REPO / folder / name).is_file():
                problems.append(f"listed module does not exist: {folder}{name}{where_else(name)}")
    for name in orphans:
        problems.append(f"module listed before any folder line: {name}{where_else(name)}")
    for folder in sorted(real_folders - listed_folders):
        problems.append(f"package folder missing from the tree: {folder}")
    for folder, name in sorted(all_real):
        if name not in listed_modules.get(folder, set()):
            problems.append(f"module missing from the tree: {folder}{name}")
    return problems


def test_readme_architecture_tree_matches_packages():
    problems = tree_problems((REPO / "README.md").read_text(encoding="utf-8"))
    assert not problems, (
        'README.md "## Architecture" tree does not match the code '
        f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
    )


def test_tree_parser_shape():
    """The parser reads the documented shape: folder lines, modules on the same or indented lines."""
    readme = "\n".join([
        "# x", "## Architecture", "intro", "```",
        "features/            shared (schema.py), window.py",
        "    spec.py          the spec, see sources/ for more",
        "inference_pipeline/connectors/mqtt/  source.py",
        "    sink.py          `kind: mqtt` sinks; models:/name@alias",
        "benchmarks/          replay_throughput.py, features/scaling.py",
        "```", "```", "second.py", "```", "## Next",
    ])
    folders, modules, orphans = parse_tree(architecture_block(readme))
    assert folders == {"features/", "sources/", "inference_pipeline/connectors/mqtt/", "benchmarks/"}
    assert modules == {
        "features/": {"schema.py", "window.py", "spec.py", "scaling.py"},
        "inference_pipeline/connectors/mqtt/": {"source.py", "sink.py"},
        "benchmarks/": {"replay_throughput.py"},
    }
    assert orphans == []
