"""The command line: `streamer VERB`. main.py builds the parser and turns errors into one
line and an exit code; ops.py holds the operations verbs, dev.py the demo harness's; common.py
what they share (exit codes, --config, loading the config). No logic lives here: a verb loads
its config, calls the library, prints.

May import anything in streamer.
"""

from streamer.cli.main import main

__all__ = ["main"]
