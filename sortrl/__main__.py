"""The `sortrl` command's entry point (also `python -m sortrl`).

The command line's modules import torch, pandas and typer (about 2 s); a Ctrl-C meanwhile ends with one line
and exit code 130, not a traceback. From there on `sortrl.cli` handles interrupts itself.
"""

import signal
import sys

STARTING_UP = "interrupted (while starting up)"


def main() -> None:
    heard = []

    def interrupted(signum, frame):  # Python's own handler, plus a note: a library's bare `except:` may swallow it
        heard.append(signum)
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:  # a command started ignoring Ctrl-C (nohup, `cmd &`) keeps ignoring it
        signal.signal(signal.SIGINT, interrupted)
    try:
        from sortrl.cli import main as run
    except KeyboardInterrupt:
        heard.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    if heard:  # also when the KeyboardInterrupt was caught inside an import: the user asked to stop
        print(STARTING_UP, file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
