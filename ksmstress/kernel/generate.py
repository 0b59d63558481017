"""Random valid workloads (`ksmstress kernel --generate N`): process counts, page counts and content duplication
drawn from a seed, valid by construction, so a disagreement with the kernel is a finding and never bad input."""

from __future__ import annotations

import random

from .reader import parse
from .workload import Workload, WorkloadError


def _rng_patterns(rng: random.Random, pool: list[int], n: int) -> str:
    """A pattern list with duplication: a few patterns from a small pool, cycled or drawn per page."""
    if rng.random() < 0.4:
        return str(rng.choice(pool))
    k = rng.randint(1, min(n, 6))
    return ",".join(str(rng.choice(pool)) for _ in range(k))


def generate_text(seed: int) -> str:
    """TOML for a random workload: process counts, page counts and content duplication drawn from `seed`.

    Each workload starts by writing every page, then runs one to four phases of random actions (writes with
    duplicated patterns, forks, MADV_UNMERGEABLE / MERGEABLE of a range, munmap of a range, exits, run=2 then
    run=1, mlock / munlock of a range, MADV_DONTNEED of a range, holes and mlocked pages included, threads that
    write or MADV_DONTNEED their process's pages and exit, mremap of a range inside one vma to a free or mapped
    place of its region, MADV_PAGEOUT of a range and reads that fault swapped pages back), always valid by
    construction.
    """
    rng = random.Random(seed)
    lrng = random.Random(f"{seed}:mlock")
    drng = random.Random(f"{seed}:dontneed")
    trng = random.Random(f"{seed}:thread")
    mrng = random.Random(f"{seed}:mremap")
    srng = random.Random(f"{seed}:swap")
    threads: dict[str, str] = {}  # live thread -> its process
    nthreads = 0
    pool = rng.sample(range(0, 600), rng.randint(1, 5))
    nproc = rng.randint(1, 4)
    procs: dict[str, list[list[bool]]] = {}
    lines = [f'name = "gen-{seed}"', f'description = "generated from seed {seed}"', ""]
    for i in range(nproc):
        regions = [rng.randint(1, 24) for _ in range(rng.randint(1, 2))]
        name = f"p{i}"
        procs[name] = [[True] * n for n in regions]
        lines += ["[[process]]", f'name = "{name}"', f"regions = {regions}", ""]
    phases: list[tuple[str, list[str]]] = [
        ("fill", [f"write {p}.{r} {_rng_patterns(rng, pool, len(m))}" for p, regs in procs.items()
              for r, m in enumerate(regs)])
    ]
    nforks = 0
    ran2 = False
    for ph in range(rng.randint(1, 4)):
        acts: list[str] = []
        for _ in range(rng.randint(1, 3)):
            live = sorted(procs)
            op = rng.choices(
                ["write", "fork", "unmergeable", "mergeable", "munmap", "exit", "run"], [5, 2, 2, 1, 2, 1, 1]
            )[0]
            p = rng.choice(live)
            regs = procs[p]
            r = rng.randrange(len(regs))
            mapped = [i for i, v in enumerate(regs[r]) if v]
            if op == "run":
                acts += ["run 1"] if ran2 else ["run 2"]
                ran2 = not ran2
                continue
            if op == "fork" and nforks < 3 and len(live) < 6:
                child = f"c{nforks}"
                nforks += 1
                procs[child] = [list(m) for m in regs]
                acts.append(f"fork {p} {child}")
                continue
            if op == "exit" and len(live) > 1:
                del procs[p]
                acts.append(f"exit {p}")
                continue
            if not mapped:
                continue
            # a run of mapped pages
            a = rng.choice(mapped)
            b = a
            while b + 1 < len(regs[r]) and regs[r][b + 1] and rng.random() < 0.8:
                b += 1
            target = f"{p}.{r}[{a}:{b + 1}]"
            if op == "munmap":
                regs[r][a : b + 1] = [False] * (b + 1 - a)
                acts.append(f"munmap {target}")
            elif op in ("unmergeable", "mergeable"):
                acts.append(f"{op} {target}")
            else:
                acts.append(f"write {target} {_rng_patterns(rng, pool, b + 1 - a)}")
        # mlock / munlock of a mapped run (issue 14): drawn from a stream of their own, so every workload a seed
        # drew before they existed is the same, with these actions added
        if lrng.random() < 0.5:
            p = lrng.choice(sorted(procs))
            r = lrng.randrange(len(procs[p]))
            mapped = [i for i, v in enumerate(procs[p][r]) if v]
            if mapped:
                a = lrng.choice(mapped)
                b = a
                while b + 1 < len(procs[p][r]) and procs[p][r][b + 1] and lrng.random() < 0.8:
                    b += 1
                acts.append(f"{lrng.choice(['mlock', 'mlock', 'munlock'])} {p}.{r}[{a}:{b + 1}]")
        # MADV_DONTNEED of a run of pages, mapped or not (-ENOMEM over a hole, -EINVAL over an mlocked page): a
        # stream of its own too, so the draws above are unchanged
        if drng.random() < 0.4:
            p = drng.choice(sorted(procs))
            r = drng.randrange(len(procs[p]))
            a, b = _any_run(drng, len(procs[p][r]))
            acts.append(f"dontneed {p}.{r}[{a}:{b}]")
        # a thread of a process starts, or one writes / MADV_DONTNEEDs its process's pages, or exits: its own stream
        if trng.random() < 0.4:
            threads = {t: p for t, p in threads.items() if p in procs}  # an exited process's threads ended with it
            if not threads or (nthreads < 4 and trng.random() < 0.3):
                p = trng.choice(sorted(procs))
                t = f"t{nthreads}"
                nthreads += 1
                threads[t] = p
                acts.append(f"thread {p} {t}")
            else:
                t = trng.choice(sorted(threads))
                regs = procs[threads[t]]
                r = trng.randrange(len(regs))
                op = trng.choice(["write", "write", "dontneed", "exit"])
                mapped = [i for i, v in enumerate(regs[r]) if v]
                if op == "exit":
                    del threads[t]
                    acts.append(f"exit {t}")
                elif mapped:
                    a = trng.choice(mapped)
                    b = a
                    while b + 1 < len(regs[r]) and regs[r][b + 1] and trng.random() < 0.8:
                        b += 1
                    if op == "write":
                        acts.append(f"write {t}.{r}[{a}:{b + 1}] {_rng_patterns(trng, pool, b + 1 - a)}")
                    else:
                        acts.append(f"dontneed {t}.{r}[{a}:{b + 1}]")
        # mremap of a mapped run inside one vma to another place of its region: a stream of its own; whether the
        # run is inside one vma is the reader's to say (it follows every range action's edges)
        if mrng.random() < 0.4:
            _mremap(mrng, procs, lines, phases, acts)
        # MADV_PAGEOUT of a run of pages, mapped or not, or a read of a mapped run (faulting swapped pages back):
        # a stream of its own
        if srng.random() < 0.4:
            p = srng.choice(sorted(procs))
            r = srng.randrange(len(procs[p]))
            row = procs[p][r]
            a, b = _any_run(srng, len(row))
            if srng.random() < 0.6:
                acts.append(f"pageout {p}.{r}[{a}:{b}]")
            elif all(row[a:b]):
                acts.append(f"read {p}.{r}[{a}:{b}]")
        if acts:
            phases.append((f"step {ph + 1}", acts))
    if ran2:
        phases.append(("run=1", ["run 1"]))
    return _text(lines, phases)


def _any_run(rng: random.Random, n: int) -> tuple[int, int]:
    """Pages [a, b) of a region of n pages, mapped or not: a run of about four from a random first page."""
    a = rng.randrange(n)
    return a, min(n, a + 1 + int(rng.expovariate(1 / 4)))


def _text(head: list[str], phases: list[tuple[str, list[str]]]) -> str:
    """The workload's TOML: its header and process lines, then one [[phase]] table per phase."""
    lines = list(head)
    for name, acts in phases:
        lines += ["[[phase]]", f'name = "{name}"', "do = [" + ", ".join(f'"{a}"' for a in acts) + "]", ""]
    return "\n".join(lines)


def _mremap(rng: random.Random, procs: dict[str, list[list[bool]]], head: list[str],
            phases: list[tuple[str, list[str]]], acts: list[str]) -> None:
    """Append `mremap P.R[A:B] D` to acts if the drawn one is valid where it stands, and move the mapped bits."""
    p = rng.choice(sorted(procs))
    r = rng.randrange(len(procs[p]))
    row = procs[p][r]
    mapped = [i for i, v in enumerate(row) if v]
    if not mapped:
        return
    a = rng.choice(mapped)
    b = a + 1
    while b < len(row) and row[b] and rng.random() < 0.6:
        b += 1
    n = b - a
    dests = [d for d in range(len(row) - n + 1) if d + n <= a or d >= b]
    if not dests:
        return
    act = f"mremap {p}.{r}[{a}:{b}] {rng.choice(dests)}"
    probe = [*phases, ("probe", [*acts, act])]
    try:
        parse(_text(head, probe), "<probe>")
    except WorkloadError:
        return  # the run crosses a vma edge: mremap would say -EFAULT, which is not compared
    d = int(act.split()[-1])
    row[a:b] = [False] * n
    row[d : d + n] = [True] * n
    acts.append(act)


def generate(seed: int) -> Workload:
    """A random valid workload from `seed` (see generate_text)."""
    return parse(generate_text(seed), f"<generated seed {seed}>")
