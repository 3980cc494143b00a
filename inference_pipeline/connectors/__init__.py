"""Connectors by external system: each module (or subpackage) holds one system's source and/or sink and their
settings; ``kinds`` lists the kinds the config accepts."""
