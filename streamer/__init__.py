"""streamer: online lifelong learning for CLIP models from a Kafka stream."""

__version__ = "0.1.0"
