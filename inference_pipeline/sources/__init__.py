"""Event sources: unbounded readers that turn broker messages into RawEvents."""
