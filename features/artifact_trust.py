"""Fitted MLTransform artifacts are loaded only when their ``attributes.json`` holds what MLTransform writes for our
scaling step, and never through jsonpickle.

Beam's MLTransform reads ``attributes.json`` with jsonpickle, which imports and calls what the file names
(``py/reduce``, ``py/function``, ``py/object`` ...): whoever can write an artifact folder could run code in the
pipeline. Here the file is read with plain ``json`` and checked against the one structure Beam 2.77 writes for
``features.spec.scaling_transform`` (one ``TFTProcessHandler`` holding ``ScaleToZScore`` steps); the handler is then
built from it, reading the artifacts where they are now rather than in the absolute folder they were fitted in (which
``attributes.json`` records, and which a downloaded version does not live in).

Only this stdlib module is imported by ``model_handlers``; Beam is imported when a transform is built.
"""
from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

ATTRIBUTES = "attributes.json"
HANDLER = "apache_beam.ml.transforms.handlers.TFTProcessHandler"
# The classes features.spec.scaling_transform uses, each with the attributes MLTransform writes for it.
TRANSFORMS: dict[str, frozenset[str]] = {
    "apache_beam.ml.transforms.tft.ScaleToZScore": frozenset({"columns", "elementwise", "name"}),
}
_HANDLERS = {HANDLER: frozenset({"transforms", "transformed_schema", "artifact_location", "artifact_mode"})}
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "transforms": (lambda v: isinstance(v, list) and bool(v), "a list of transforms"),
    "transformed_schema": (lambda v: v == {}, "{} (as MLTransform writes it)"),
    "artifact_location": (lambda v: isinstance(v, str), "a path"),
    "artifact_mode": (lambda v: v in ("produce", "consume"), "'produce' or 'consume'"),
    "columns": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v), "column names"),
    "elementwise": (lambda v: isinstance(v, bool), "true or false"),
    "name": (lambda v: v is None or isinstance(v, str), "a string or null"),
}
_SUBFOLDER = re.compile(r"[0-9a-f]{6}")  # MLTransform's folder per handler: uuid4().hex[:6]


class UntrustedArtifactError(ValueError):
    """A model artifact that is not what training wrote: refused before anything in it is loaded."""


def _refuse(where: str, problem: str) -> NoReturn:
    raise UntrustedArtifactError(f"{where}: {problem}; refused before loading (only what MLTransform writes for "
                                 f"{', '.join(name.rsplit('.', 1)[1] for name in TRANSFORMS)} is loaded)")


def _kind(value: Any) -> str:
    """A value as a message names it; a jsonpickle tag by name."""
    if isinstance(value, dict):
        tags = sorted(key for key in value if str(key).startswith("py/"))
        return f"a jsonpickle {tags[0]!r}" if tags else "an object"
    return "a list" if isinstance(value, list) else repr(value)[:80]


def _object(value: Any, classes: dict[str, frozenset[str]], at: str, where: str) -> dict[str, Any]:
    """A jsonpickle object of an allowed class holding exactly that class's attributes, each of the allowed form."""
    if not isinstance(value, dict):
        _refuse(where, f"{at} is {_kind(value)}, not an object")
    tags = sorted(key for key in value if key.startswith("py/") and key != "py/object")
    if tags:
        _refuse(where, f"{at} holds a jsonpickle {tags[0]!r}")
    name = value.get("py/object")
    if not isinstance(name, str) or name not in classes:
        _refuse(where, f"{at} names class {name!r}, not one of {sorted(classes)}")
    fields = set(value) - {"py/object"}
    if fields != classes[name]:
        _refuse(where, f"{at} ({name}) has attributes {sorted(fields)}, not {sorted(classes[name])}")
    for field in sorted(fields):
        allowed, expected = _FIELDS[field]
        if not allowed(value[field]):
            _refuse(where, f"{at}.{field} is {_kind(value[field])}, not {expected}")
    return value


def trusted_attributes(artifact_dir: str | Path) -> dict[str, Any]:
    """The handler entry of ``artifact_dir``'s attributes.json, read with plain json and allow-listed, its
    ``artifact_location`` the handler's folder inside ``artifact_dir``; UntrustedArtifactError names any problem."""
    folder = Path(artifact_dir)
    where = str(folder / ATTRIBUTES)
    try:
        data = json.loads((folder / ATTRIBUTES).read_bytes())
    except FileNotFoundError:
        _refuse(where, "missing")
    except (ValueError, RecursionError) as exc:
        _refuse(where, f"not JSON ({type(exc).__name__})")
    if not isinstance(data, list) or len(data) != 1:
        _refuse(where, f"holds {_kind(data)}, not a list of one {HANDLER.rsplit('.', 1)[1]}")
    entry = _object(data[0], _HANDLERS, "[0]", where)
    for index, step in enumerate(entry["transforms"]):
        _object(step, TRANSFORMS, f"[0].transforms[{index}]", where)
    subfolder = entry["artifact_location"].replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    if not _SUBFOLDER.fullmatch(subfolder) or not (folder / subfolder).is_dir():
        _refuse(where, f"[0].artifact_location {entry['artifact_location']!r} names no artifact folder of {folder}")
    return {**entry, "artifact_location": str(folder / subfolder)}


def _allowed_class(name: str) -> type:
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def fitted_transform(artifact_dir: str | Path):
    """MLTransform's read mode over trusted attributes: the ``TFTProcessHandler`` they describe, consuming the
    artifacts in ``artifact_dir``."""
    from apache_beam.ml.transforms.handlers import TFTProcessHandler

    entry = trusted_attributes(artifact_dir)
    steps = [_allowed_class(step["py/object"])(**{key: value for key, value in step.items() if key != "py/object"})
             for step in entry["transforms"]]
    return TFTProcessHandler(artifact_location=entry["artifact_location"], transforms=steps, artifact_mode="consume")
