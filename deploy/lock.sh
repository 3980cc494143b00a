#!/usr/bin/env bash
# Resolves deploy/requirements.lock from the package index: this package's dependencies (pyproject.toml) for the
# worker image (linux x86_64, CPython 3.11, glibc 2.28+), each pinned with its hashes, held to the versions installed
# in .venv (the ones the tests ran with; torch's local "+cpu" label dropped, so the index's CUDA build of the same
# version is taken). Needs uv (https://docs.astral.sh/uv/) and the index; run from anywhere, after `make install`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tested="$(mktemp)"
trap 'rm -f "$tested"' EXIT
"$repo/.venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/\+cpu$//' > "$tested"
cd "$repo"
uv pip compile pyproject.toml --constraints "$tested" \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --index-url https://pypi.org/simple --generate-hashes --no-annotate \
    --custom-compile-command "deploy/lock.sh" --output-file deploy/requirements.lock
