"""The development harness: dataset streams, a producer, the embedded broker, the demo and
its report, misalignment scenarios. Nothing in the daemon's import path imports it."""
