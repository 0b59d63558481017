"""The `ksmstress` console script's entry point, importing nothing before it can handle Ctrl-C.

Why not `ksmstress.cli:main` directly: the console script imports the entry point's module first, and importing
the CLI (numpy, multiprocess, the model) takes about half a second, during which a Ctrl-C was a traceback. Here
that import happens inside the handler: an interrupt at any moment is one line and exit status 130.
"""

from __future__ import annotations

import os
import sys

EXIT_INTERRUPTED = 130  # as options.EXIT_INTERRUPTED, which importing would defeat the purpose of this module
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


def main() -> int:
    try:
        from .cli import main as cli_main

        code = cli_main()
        sys.stdout.flush()  # inside the handler: a reader gone before the last buffered line is a broken pipe too
        return code
    except KeyboardInterrupt:  # only if it came before cli.main could catch it (during the imports)
        sys.stderr.write("ksmstress: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `ksmstress mutate --list | head`: the reader left; the command's own cleanup has run (its finally
        # blocks were unwound by this exception). Point stdout at /dev/null so the interpreter's final flush
        # cannot raise again, and end quietly as a SIGPIPE'd writer would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
