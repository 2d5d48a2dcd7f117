"""The `sortrl` command's entry point (also `python -m sortrl`).

The command line's modules import torch, pandas and typer (about 2 s); a Ctrl-C meanwhile ends with one line
and exit code 130, not a traceback. From there on `sortrl.cli` handles interrupts itself.
"""

import sys


def main() -> None:
    try:
        from sortrl.cli import main as run
    except KeyboardInterrupt:
        print("interrupted (while starting up)", file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
