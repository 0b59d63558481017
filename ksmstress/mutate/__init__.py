"""`ksmstress mutate`: mutation testing of the model, our own measure of the detectors' power.

One job per module: rules.py (where each concurrency-shaped defect can go), generate.py (mutants: edits applied,
checked, deduplicated, named, sampled), scratch.py (a scratch copy of the package and the probe process),
probe.py (the soak of one mutant, run inside the copy), campaign.py (mutants in parallel jobs, clean stops),
equivalent.py (the reviewed equivalent-mutant list), report.py (score, table, kept diffs), cli.py (the command).
The main CLI registers the command with `mutate.add_parser(sub)`.
"""

from .cli import add_parser, cmd_mutate, main

__all__ = ["add_parser", "cmd_mutate", "main"]
