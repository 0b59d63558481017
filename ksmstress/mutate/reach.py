"""Which scenarios run which model function: a probe soaks a mutant on those first.

Why: a mutant changes one function, and a run that never enters it cannot kill it. A campaign over every shipped
scenario gives each scenario a run or two of a 20-second budget, so the one scenario made for a path got no more
runs than twenty that never reach it (dio_complete:97:remove-lock:0 survived a 20-second campaign over 31
scenarios, while focus-dio-reclaim alone kills it at its first run). Mutation tools select tests by coverage for
the same reason (PIT's coverage-based test selection).

How: faithful runs of each scenario (seeds 0..SEEDS-1, random) with a profile hook (sys.setprofile) installed
before the run's tasks are forked, so every task inherits it; each task counts the model functions it enters in
an anonymous shared map, and the counts become calls per second of run. A function is named as `ksmstress mutate
--list` names it: its file under the package and its qualified name (Class.method, outer.inner). The map only
directs the work (probe.per_seed_steps): the scenarios that enter the mutated function share most of the runs,
evenly, and the rest still rotates over every scenario, since other seeds may reach what these did not; bounded
and coverage take the scenarios in order of the rate.
"""

from __future__ import annotations

import importlib
import inspect
import mmap
import pkgutil
import sys
import time
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any

SEEDS = 2  # faithful random runs per scenario: the common paths; rare ones are what the shares of the rest are for


def _codes(code: CodeType) -> Iterator[CodeType]:
    yield code
    for c in code.co_consts:
        if isinstance(c, CodeType):
            yield from _codes(c)


def model_functions() -> dict[CodeType, str]:
    """Every function of ksmstress/mm (nested ones and methods included) by its code object: `mm/F.py:QUALNAME`."""
    from .. import mm

    out: dict[CodeType, str] = {}
    for info in pkgutil.iter_modules(mm.__path__):
        mod = importlib.import_module(f"{mm.__name__}.{info.name}")
        rel = f"mm/{info.name}.py"
        objs = [o for o in vars(mod).values() if getattr(o, "__module__", None) == mod.__name__]
        objs += [m for o in objs if inspect.isclass(o) for m in vars(o).values()]
        for o in objs:
            fn = inspect.unwrap(o.__func__ if isinstance(o, (staticmethod, classmethod)) else o)
            if inspect.isfunction(fn) and fn.__module__ == mod.__name__:
                for c in _codes(fn.__code__):
                    out[c] = f"{rel}:{c.co_qualname.replace('.<locals>', '')}"
    return out


def reach_map(paths: list[str], seeds: int = SEEDS,
              on_scenario: Callable[[str, float], None] = lambda p, s: None) -> dict[str, list[tuple[str, float]]]:
    """`file:function` -> [(scenario path, calls per second of run)] for the scenarios (in `paths` order) whose
    faithful runs entered it: where a mutant of it is met, and how often per second spent."""
    from ..runner import run_one
    from ..scenario import load

    codes = model_functions()
    names = sorted(set(codes.values()))
    slot = {n: i for i, n in enumerate(names)}
    index = {c: slot[n] for c, n in codes.items()}
    seen: dict[str, list[tuple[str, float]]] = {}
    for path in paths:
        t0 = time.monotonic()
        sc = load(path)
        area = mmap.mmap(-1, 4 * len(names))  # MAP_SHARED | MAP_ANONYMOUS: the forked tasks count into it
        calls = memoryview(area).cast("I")  # one task runs at a time (controlled mode): plain increments are exact

        def profile(frame: FrameType, event: str, arg: Any, calls: memoryview = calls) -> None:
            if event == "call":
                i = index.get(frame.f_code)
                if i is not None:
                    calls[i] += 1

        elapsed = 0.0
        try:
            for seed in range(seeds):
                try:
                    elapsed += run_one(sc, seed, "random", observe=lambda st, k, ctl: sys.setprofile(profile)).elapsed
                finally:
                    sys.setprofile(None)
            for i, name in enumerate(names):
                if calls[i]:
                    seen.setdefault(name, []).append((path, calls[i] / max(elapsed, 1e-3)))
        finally:
            calls.release()
            area.close()
        on_scenario(path, time.monotonic() - t0)
    return seen
