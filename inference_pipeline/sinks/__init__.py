"""Result sinks: where predictions, alerts and dead letters are written."""
