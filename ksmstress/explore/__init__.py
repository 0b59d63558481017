"""Drivers that run many runs of a scenario and steer the next by what the last ones did (above runner).

`explore_bounded` (bounded.py): every schedule of one seed with at most C preemptions, fewest first;
`coverage_search` (search.py): interleaving-coverage feedback over a corpus of schedules (corpus.py);
their front doors: bounded_cmd.py (`run --strategy bounded`), coverage_cmd.py (`ksmstress coverage`).
"""

from __future__ import annotations

from .bounded import BoundedResult, Level, explore_bounded
from .search import SearchResult, coverage_search

__all__ = ["BoundedResult", "Level", "SearchResult", "coverage_search", "explore_bounded"]
