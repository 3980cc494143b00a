"""Bound the memory of tf.Transform's tf.Example encoder, which grew with every element in a long stream.

MLTransform hands TFT instance dicts, and TFT encodes each one into a single tf.Example it reuses for speed
(``ExampleProtoCoder``). With the upb protobuf runtime, a message's bytes live in an arena that is freed only with
the message: clearing a field does not give its bytes back, so every encoded ``CODED_SAMPLE`` (the columns
MLTransform passes through, pickled) stayed in memory, about 130 bytes per event, 1 GB a day at 100 events/s.
The coder here replaces its reusable message every ``RENEW_EVERY`` encodes, so its arena holds at most that many.

Beam imports every ``BeamPlugin`` subclass's module on each Dataflow worker at start-up, before it builds any
step, so the coders unpickled there are the bounded ones too; locally, importing this module is enough.
"""
from __future__ import annotations

from typing import Any

from apache_beam.utils.plugin import BeamPlugin
from tensorflow_transform.coders.example_proto_coder import ExampleProtoCoder

RENEW_EVERY = 256

_unbounded_encode = getattr(ExampleProtoCoder.encode, "__wrapped__", ExampleProtoCoder.encode)


def _encode_with_bounded_arena(self: ExampleProtoCoder, instance: dict[str, Any]) -> Any:
    encoded = getattr(self, "_encodes_since_renewal", 0)
    if encoded >= RENEW_EVERY:
        self._encode_example_cache = type(self._encode_example_cache)()
        for handler in self._feature_handlers:
            handler.initialize_encode_cache(self._encode_example_cache)
        encoded = 0
    self._encodes_since_renewal = encoded + 1
    return _unbounded_encode(self, instance)


_encode_with_bounded_arena.__wrapped__ = _unbounded_encode
ExampleProtoCoder.encode = _encode_with_bounded_arena


class BoundedExampleCoder(BeamPlugin):
    """Marks this module for import on every Beam worker at start-up (see the module docstring)."""
