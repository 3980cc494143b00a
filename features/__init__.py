"""Event schema, per-device window features and the MLTransform spec, shared by training and streaming."""
