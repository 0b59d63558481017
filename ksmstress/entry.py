"""The `ksmstress` console script's entry point, importing nothing before it can handle Ctrl-C.

Why not `ksmstress.cli:main` directly: the console script imports the entry point's module first, and importing
the CLI (numpy, multiprocess, the model) takes about half a second, during which a Ctrl-C was a traceback. Here
that import happens inside the handler: an interrupt at any moment is one line and exit status 130.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # as options.EXIT_INTERRUPTED, which importing would defeat the purpose of this module


def main() -> int:
    try:
        from .cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:  # only if it came before cli.main could catch it (during the imports)
        sys.stderr.write("ksmstress: interrupted\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
