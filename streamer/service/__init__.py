"""Running the daemon: wiring, the run loop, metrics, health, reload, persistence, explain.

May import every other subpackage except the development harness (`streamer.dev`).
"""
