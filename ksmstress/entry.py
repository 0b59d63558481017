"""The `ksmstress` console script: the CLI, imported only once a Ctrl-C can be answered quietly.

Why a module of its own: importing the CLI pulls in numpy and multiprocess (about half a second); a Ctrl-C in
that window would otherwise print an import traceback instead of the exit status 130 every front door gives.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("ksmstress: interrupted\n")
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
