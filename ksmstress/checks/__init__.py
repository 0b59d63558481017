"""Detectors. The model reports to them through `ksmstress.mm.hooks`; `Detectors` is the bundle a run installs."""

from __future__ import annotations

from .traversal import TraversalCheck


class Detectors(TraversalCheck):
    """Every in-run detector behind the model's hook interface (lock hooks are silent until lockdep lands)."""

    def lock_acquired(self, tid: int, lid: int, mode: int, site: str) -> None:
        pass

    def lock_released(self, tid: int, lid: int, site: str) -> None:
        pass
