"""Streaming inference pipeline: sources, model runners, alerting, sinks and run reports."""
