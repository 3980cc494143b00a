"""Credential masking for text that leaves a process: any ``scheme://user:password@`` and any known secret become
``***``. The receiver child writes all its output (its log, paho's log, tracebacks) through ``RedactingStream``."""
from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import TextIO

URL_PASSWORD = re.compile(r"(\w+://[^\s/:@]*):[^\s/@]*@")
MASK = "***"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with each non-empty secret and every URL password replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return URL_PASSWORD.sub(rf"\1:{MASK}@", text)


class RedactingStream(io.TextIOBase):
    """A text stream that masks credentials (``redact``) in everything written through it to ``target``."""

    def __init__(self, target: TextIO, secrets: Iterable[str | None] = ()):
        super().__init__()
        self._target = target
        self._secrets = tuple(secret for secret in secrets if secret)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._target.write(redact(text, self._secrets))
        return len(text)

    def flush(self) -> None:
        self._target.flush()
