"""tf.Transform's tf.Example encoder keeps a bounded amount of memory over a long stream, with unchanged output."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_transform.coders.example_proto_coder import ExampleProtoCoder
from tensorflow_transform.tf_metadata import schema_utils

from features.example_coder_memory import RENEW_EVERY, _unbounded_encode

SCHEMA = schema_utils.schema_from_feature_spec({
    "CODED_SAMPLE": tf.io.VarLenFeature(tf.string), "x": tf.io.VarLenFeature(tf.float32)})


def instance(i: int, size: int = 100) -> dict:
    return {"CODED_SAMPLE": [bytes([i % 256]) * size], "x": np.arange(i % 7, dtype=np.float32)}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def test_encoding_is_unchanged_across_renewals():
    bounded, unbounded = ExampleProtoCoder(SCHEMA), ExampleProtoCoder(SCHEMA)
    for i in range(3 * RENEW_EVERY + 5):
        assert bounded.encode(instance(i)) == _unbounded_encode(unbounded, instance(i))


def test_memory_stays_bounded_while_encoding_a_long_stream():
    coder = ExampleProtoCoder(SCHEMA)
    for i in range(2 * RENEW_EVERY):
        coder.encode(instance(i, 10_000))
    before = rss_mb()
    for i in range(30_000):
        coder.encode(instance(i, 10_000))
    assert rss_mb() - before < 50, "300 MB went through the encoder; it must not keep them"
