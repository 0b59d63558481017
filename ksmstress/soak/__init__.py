"""`ksmstress soak`: many seeds across scenarios in parallel jobs, with live progress and a summary by failure class.

Why a separate command from `run`: `run` answers "is this seed range clean?" in one process; a soak is a campaign,
bounded by wall time or run count, spread over every CPU, that keeps every failure it finds (with `--keep-going`)
and ends with one replay command per failure class.

One job per module: seeds.py (which seed is work item k), item.py (what a worker does with item k), summary.py
(the tally, the summary and its printing), command.py (the options, the feeding policy over ksmstress.pool, and
the command). The processes themselves are the pool's (ksmstress/pool.py), shared with `bench`.
"""

from .command import add_parser, cmd_soak

__all__ = ["add_parser", "cmd_soak"]
