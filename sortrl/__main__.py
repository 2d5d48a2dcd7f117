"""The `sortrl` command's entry point (also `python -m sortrl`).

The command line's modules import torch, pandas and typer (about 2 s); a Ctrl-C meanwhile ends with one line
and exit code 130, not a traceback. From there on `sortrl.cli` handles interrupts itself.
"""

import signal
import sys

STARTING_UP = "interrupted (while starting up)"
STOPPED_STARTING_UP = "stopped (while starting up)"


def main() -> None:
    heard = []

    def interrupted(signum, frame):  # Python's own handler, plus a note: a library's bare `except:` may swallow it
        heard.append(signum)
        raise KeyboardInterrupt

    def terminated(signum, frame):  # SIGTERM (`kill`): as Ctrl-C, but said as such
        heard.append(signum)
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:  # a command started ignoring Ctrl-C (nohup, `cmd &`) keeps ignoring it
        signal.signal(signal.SIGINT, interrupted)
    previous_term = signal.getsignal(signal.SIGTERM)
    if previous_term is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, terminated)
    try:
        from sortrl.cli import main as run
    except KeyboardInterrupt:
        heard.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
    if signal.SIGTERM in heard:
        print(STOPPED_STARTING_UP, file=sys.stderr)
        sys.exit(143)
    if heard:  # also when the KeyboardInterrupt was caught inside an import: the user asked to stop
        print(STARTING_UP, file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
