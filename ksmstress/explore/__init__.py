"""Drivers that run many runs of a scenario and steer the next by what the last ones did (above runner).

`coverage_search` (search.py): interleaving-coverage feedback over a corpus of schedules (corpus.py);
`ksmstress coverage` (command.py): pair coverage growth, random beside coverage-guided, and the sites never paired.
"""

from __future__ import annotations

from .search import SearchResult, coverage_search

__all__ = ["SearchResult", "coverage_search"]
