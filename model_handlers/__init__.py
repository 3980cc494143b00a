"""Beam ModelHandlers chosen by config: local torch (CPU/GPU), any MLflow model, remote HTTP endpoint, Vertex AI
endpoint."""
