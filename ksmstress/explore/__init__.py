"""Drivers that run many schedules of one scenario and seed to search the schedule space (above the runner)."""

from __future__ import annotations

from .bounded import BoundedResult, Level, explore_bounded

__all__ = ["BoundedResult", "Level", "explore_bounded"]
