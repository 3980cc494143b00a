"""Beam ModelHandlers chosen by config: local torch (CPU/GPU), remote HTTP endpoint, Vertex AI endpoint."""
