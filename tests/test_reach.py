"""Paths the shipped scenarios must reach in real runs, not only in the step-by-step model tests.

Why: a scenario that claims to race two paths is worth something only if some schedule of it really puts them
together. Each test replays real controlled runs with the event recorder (ksmstress.explain.record) and looks for
the kernel call chain of the path in question; it tries the seeds known to reach it first (one run when the model
is unchanged) and then searches on, so a model change that moves the schedules costs time, not a false failure.
"""

from __future__ import annotations

from collections.abc import Iterator

from ksmstress.explain.record import Recorder
from ksmstress.runner import run_one
from ksmstress.scenario import load, resolve

SEARCH = 80  # seeds tried in all: focus-dontneed-unmerge reached the path in 3 of seeds 0..29 (random)


def _seeds(known: tuple[int, ...]) -> Iterator[int]:
    yield from known
    yield from (s for s in range(SEARCH) if s not in known)


def _first_reaching(name: str, known: tuple[int, ...], inner: str, outer: str) -> tuple[int, str] | None:
    """The first seed (known ones first) whose clean run allocates a page with `outer` ... `inner` on the chain."""
    sc = load(resolve([name])[0])
    for seed in _seeds(known):
        with Recorder(uses=False) as rec:
            res = run_one(sc, seed, "random", observe=rec.install)
            events = rec.events()
        assert res.failure is None, (name, seed, res.failure)
        for e in events:
            chain = e.chain.split(" > ")
            if e.kind == "alloc" and outer in chain and inner in chain[chain.index(outer) :]:
                return seed, e.chain
    return None


def test_unmerge_meets_a_zapped_pte_and_faults_a_fresh_page() -> None:
    """focus-dontneed-unmerge: MADV_DONTNEED (mmap_sem read) zaps the pte between break_ksm's follow_page and its
    write fault, so the fault goes to do_anonymous_page (the path issue 14 says one-task-per-mm could not reach)."""
    hit = _first_reaching("focus-dontneed-unmerge", (16, 21, 25), "do_anonymous_page", "break_ksm")
    assert hit is not None, f"no seed of 0..{SEARCH - 1} reached break_ksm > ... > do_anonymous_page"
    assert "unmerge_ksm_pages > break_ksm > handle_mm_fault > do_anonymous_page" in hit[1]


WAIT_UNDER_RUN2 = """
name = "wait-under-run2"
description = "wait-scans while an admin writes run=2 every few points (full_scans goes back to 0 each time)"
max_steps = 60000
[arena]
page_size = 8
vpages = 4
max_vmas = 2
max_mm = 1
[ksm]
pages_to_scan = 2
[reclaim]
enabled = false
[admin]
unmerge_every = 6
[[task]]
count = 1
region = 2
patterns = 1
ops = 0
script = ["fill:0", "wait-scans:3", "read-all", "wait-scans:3", "read-all", "wait-scans:3", "read-all"]
max_forks = 0
"""


def test_wait_scans_counts_scans_across_a_run2_reset() -> None:
    """2.6.33's run=2 sets full_scans back to 0 (unmerge_and_remove_all_rmap_items: ksm_scan.seqnr = 0). A
    program waiting for `full_scans >= start + N` then waits out its whole cap whenever the admin resets the
    count faster than N scans, and the run ends as a hang (PCT found it: ksmd, admin and the program each
    yield once a round); wait-scans counts the scans as they complete instead."""
    from ksmstress.scenario import parse

    sc = parse(WAIT_UNDER_RUN2, "wait-under-run2.toml")
    for strategy in ("pct", "random"):
        for seed in range(3):
            res = run_one(sc, seed, strategy)
            assert res.failure is None, (strategy, seed, res.failure)
