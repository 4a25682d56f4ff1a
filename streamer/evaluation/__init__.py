"""Measurement: probes, windows, the accuracy matrix, alignment and misalignment diagnosis, drift.

May import: `streamer.records`, `streamer.config`, `streamer.logs`, `streamer.learning`.
"""
