"""pytest plugin (entry point `pytest11: ksmstress`): seeded ksmstress runs as tests, reproducible under xdist.

Why a plugin and not a helper module: the base seed has to be chosen once per session, printed in the report
header, and handed to every xdist worker (on this machine or, through execnet gateways, on others) before any test
runs; only hooks can do that. Each test's seed is then a stable hash of (base seed, node id), so a test gets the
same seeds whichever worker or host runs it, in whatever order, and `pytest --ksm-seed=N` reruns all of them.

- Options: `--ksm-seed N` (default: random, shown in the header), `--ksm-runs K` (seeds per `ksm_run` call,
  default 1), `--ksm-mode controlled|free`, `--ksm-artifacts DIR` (default: a directory under pytest's basetemp).
- Fixtures: `ksm_seed` (this test's seed), `ksm_artifacts` (the artifact directory), `ksm_run` (run a scenario over
  this test's seeds and return a `KsmVerdict`; `verdict.assert_clean()` fails with the class, the message and the
  exact `ksmstress replay ARTIFACT` command).
- The `stress` marker is registered here as well as in this project's pyproject, so other projects can use it.
- pytest-timeout: each run announces "ksmstress: scenario=... seed=..." on stderr before it starts, so the timeout
  dump (which shows captured stderr) names what was running. With timeout_method "thread" pytest-timeout calls
  os._exit(): the run's task processes then die with it (PR_SET_PDEATHSIG, set by the runner) and the arena is an
  anonymous mapping, so nothing is left behind; with "signal" the exception unwinds through run_one's `finally`.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import argtypes, cpus
from .argtypes import SEED_BITS
from .bugs import validate
from .explore.search import SearchResult, search_runs
from .report import write_artifact
from .runner import MODES, RunResult, run_seeds
from .scenario import Scenario, load, resolve
from .sched.pct import MAX_DEPTH
from .verdict import failure_lines, replay_command, reproduced_text, rerun_command

SEED_KEY = pytest.StashKey[int]()
VERDICTS_KEY = pytest.StashKey[list["KsmVerdict"]]()


def derive_seed(base: int, nodeid: str) -> int:
    """A test's seed: a 63-bit blake2b hash of (base seed, node id). Not hash(): that is salted per process, and
    the point is that every worker, host and rerun computes the same number."""
    h = hashlib.blake2b(f"{base}\0{nodeid}".encode(), digest_size=8, person=b"ksmstress-seed")
    return int.from_bytes(h.digest(), "big") >> (64 - SEED_BITS)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("ksmstress", "ksmstress seeded race runs")
    g.addoption(
        "--ksm-seed",
        type=argtypes.seed,
        default=None,
        metavar="N",
        help="base seed; every test's seed is derived from it and its node id (default: random, printed in the header)",
    )
    g.addoption(
        "--ksm-runs",
        type=argtypes.positive_int,
        default=None,
        metavar="K",
        help="seeds per ksm_run call (default 1; a test may choose its own default)",
    )
    g.addoption(
        "--ksm-mode",
        choices=MODES,
        default="controlled",
        help="controlled (seeded scheduler, replayable) or free (tasks run freely)",
    )
    g.addoption(
        "--ksm-artifacts",
        default=None,
        metavar="DIR",
        help="directory for failure artifacts (default: under pytest's basetemp)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stress: long soak tests (tox -e stress)")
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "ksm_seed" in workerinput:
        seed = int(workerinput["ksm_seed"])  # chosen once by the controller: every worker agrees
    elif config.getoption("ksm_seed") is not None:
        seed = int(config.getoption("ksm_seed"))
    else:
        seed = secrets.randbelow(1 << 32)  # short enough to retype from the header
    config.stash[SEED_KEY] = seed
    _CONFIG["config"] = config


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, in the controller, once per worker (popen, ssh or socket gateway): pass the base seed on."""
    node.workerinput["ksm_seed"] = node.config.stash[SEED_KEY]


def pytest_report_header(config: pytest.Config) -> str:
    runs = config.getoption("ksm_runs")
    extra = (f" --ksm-runs={runs}" if runs else "") + (
        f" --ksm-mode={config.getoption('ksm_mode')}" if config.getoption("ksm_mode") != "controlled" else ""
    )
    return f"ksmstress: --ksm-seed={config.stash[SEED_KEY]}{extra}"


def _announce(config: pytest.Config, text: str) -> None:
    """A line straight to the terminal's stderr, unbuffered, around pytest's capture: a CI log that is cut short
    (tox sends SIGTERM 0.3 s after SIGINT) still holds the seed, whatever stdout's buffer did not flush."""
    if getattr(config, "workerinput", None) is not None:
        return  # xdist workers: the controller speaks for the session
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _rerun_line(config: pytest.Config) -> str:
    return f"rerun these seeds: pytest --ksm-seed={config.stash[SEED_KEY]} " + " ".join(
        shlex.quote(a) for a in config.invocation_params.args if not str(a).startswith("--ksm-seed")
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    _announce(session.config, f"ksmstress: --ksm-seed={session.config.stash[SEED_KEY]}")


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Interrupted (Ctrl-C, or a CI's SIGINT before its SIGTERM): the seed again, with the command that reruns it."""
    config = _CONFIG.get("config")
    if config is not None and SEED_KEY in config.stash:
        _announce(config, f"ksmstress: interrupted; {_rerun_line(config)}")


_CONFIG: dict[str, pytest.Config] = {}


@dataclass
class KsmVerdict:
    """What one `ksm_run` call found. `replay` is the command to see it again: `ksmstress replay ARTIFACT` for a
    failure, the `ksmstress run` command of the same seeds for a clean verdict."""

    scenario: str
    verdict: str  # clean | failure
    seed: int  # the failing seed, else the first seed run
    first_seed: int
    runs: int  # runs done (a failure stops the sequence)
    strategy: str
    bugs: list[str]
    failure_class: str | None
    message: str | None
    replay: str
    artifact: Path | None
    steps: int
    reproduced: str | None = None
    nodeid: str = ""
    base_seed: int | None = None
    failure: dict[str, Any] | None = field(default=None, repr=False)
    result: RunResult | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.verdict == "clean"

    def describe(self) -> str:
        """The lines a failed assertion (and the report's ksmstress section) show."""
        if self.runs == 1:
            seeds = f"seed {self.seed}"
        elif self.ok:
            seeds = f"seeds {self.first_seed}..{self.first_seed + self.runs - 1}"
        else:
            seeds = f"seed {self.seed} (run {self.runs} from seed {self.first_seed})"
        where = f"{self.scenario} {seeds}, {self.strategy}" + (f", bugs {','.join(self.bugs)}" if self.bugs else "")
        if self.ok:
            return f"ksmstress: clean: {where}\n  rerun: {self.replay}"
        rep = f" ({self.reproduced})" if self.reproduced else ""
        lines = [f"ksmstress: {self.failure_class} in {where}{rep}", *failure_lines(self.failure)]
        lines.append(f"  replay: {self.replay}")
        if self.base_seed is not None and self.nodeid:
            lines.append(f"  rerun:  pytest --ksm-seed={self.base_seed} {shlex.quote(self.nodeid)}")
        return "\n".join(lines)

    def assert_clean(self) -> None:
        if not self.ok:
            raise AssertionError(self.describe())

    def assert_failure(self, *classes: str) -> None:
        """The run must have failed (with one of `classes`, if given): for tests that a variant is caught."""
        if self.ok:
            raise AssertionError(
                f"expected a failure{' of class ' + '/'.join(classes) if classes else ''}, got {self.describe()}"
            )
        if classes and self.failure_class not in classes:
            raise AssertionError(f"expected class {'/'.join(classes)}, got {self.describe()}")


@pytest.fixture
def ksm_seed(request: pytest.FixtureRequest) -> int:
    """This test's seed, derived from the session's base seed and the test's node id."""
    seed = derive_seed(request.config.stash[SEED_KEY], request.node.nodeid)
    request.node.user_properties.append(("ksm_seed", seed))
    return seed


@pytest.fixture(scope="session")
def ksm_artifacts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    opt = request.config.getoption("ksm_artifacts")
    return Path(opt) if opt else tmp_path_factory.mktemp("ksm-artifacts")


def _xdist_cpu(config: pytest.Config) -> int | None:
    """One CPU per xdist worker for controlled runs, unless $KSMSTRESS_CPU already says (the runner reads it)."""
    if os.environ.get(cpus.ENV):
        return None
    wid = str(getattr(config, "workerinput", {}).get("workerid", ""))
    if not wid.startswith("gw") or not wid[2:].isdigit():
        return None
    return cpus.nth(int(wid[2:]))


@pytest.fixture
def ksm_run(request: pytest.FixtureRequest, ksm_seed: int, ksm_artifacts: Path) -> Callable[..., KsmVerdict]:
    """`ksm_run(scenario, bugs=(), runs=None, strategy="random", pct_depth=None, timeout=120.0, mode=None)`.

    Runs seeds ksm_seed, ksm_seed+1, ... (`runs`, default --ksm-runs or 1) of a shipped scenario name, a path or a
    Scenario, stopping at the first failure, whose artifact goes to --ksm-artifacts, and returns a KsmVerdict.
    `strategy="coverage"` runs one coverage-guided search of `runs` runs instead (`ksmstress run --strategy
    coverage --seed ksm_seed --runs N` is the same search), controlled mode only.
    `mode` overrides --ksm-mode for a test that is about one mode. Several calls in one test use the same seeds
    (each on its own scenario or variants, typically)."""
    config = request.config
    base = config.stash[SEED_KEY]
    verdicts: list[KsmVerdict] = request.node.stash.setdefault(VERDICTS_KEY, [])

    def run(
        scenario: str | Path | Scenario,
        bugs: list[str] | tuple[str, ...] | None = None,
        runs: int | None = None,
        strategy: str = "random",
        pct_depth: int | None = None,
        timeout: float = 120.0,
        mode: str | None = None,
    ) -> KsmVerdict:
        mode = mode or config.getoption("ksm_mode")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        cpu = _xdist_cpu(config) if mode == "controlled" else None
        sc = scenario if isinstance(scenario, Scenario) else load(resolve([str(scenario)])[0])
        bugset = sorted(validate(list(bugs or ())))
        n = runs if runs is not None else (config.getoption("ksm_runs") or 1)
        if n < 1:
            raise ValueError(f"runs: expected a positive number, got {n}")
        if pct_depth is not None and not 1 <= pct_depth <= MAX_DEPTH:
            raise ValueError(f"pct_depth: expected 1..{MAX_DEPTH}, got {pct_depth}")
        extra: dict[str, Any] = {"mode": mode} if mode != "controlled" else {}
        # Before anything can hang: pytest-timeout's dump shows captured stderr, so it names what was running.
        sys.stderr.write(
            f"ksmstress: scenario={sc.name} seed={ksm_seed} runs={n} strategy={strategy}"
            + (f" bugs={','.join(bugset)}" if bugset else "")
            + f" (--ksm-seed={base})\n"
        )
        sys.stderr.flush()
        res: RunResult | None = None
        done = 0
        search: SearchResult | None = None
        if strategy == "coverage":  # one search of n runs, its fresh seeds counting up from the test's seed
            if mode != "controlled" or pct_depth is not None:
                raise ValueError("strategy coverage: controlled mode only, and no pct_depth")
            search = SearchResult(sc.name, "coverage", ksm_seed)
            results: Iterator[RunResult] = search_runs(search, sc, bugset, n, timeout=timeout, cpu=cpu)
        else:
            seeds = ((ksm_seed + i) % (1 << SEED_BITS) for i in range(n))
            results = run_seeds(sc, seeds, strategy, bugset, cpu=cpu, pct_depth=pct_depth, timeout=timeout, **extra)
        for r in results:
            res, done = r, done + 1
            if r.verdict != "clean":
                break
        assert res is not None
        if search is not None:  # a mutant whose prefix diverged is a run the search counts but does not yield
            done = search.runs
        artifact = write_artifact(ksm_artifacts, sc, res, pct_depth) if res.verdict == "failure" else None
        if artifact is not None:
            replay = replay_command(artifact)
        else:  # a search is deterministic for its seed: the same command runs the same runs
            replay = rerun_command(sc, ksm_seed, strategy, bugset, pct_depth, mode, runs=done)
        f = res.failure or {}
        v = KsmVerdict(
            scenario=sc.name,
            verdict=res.verdict,
            seed=res.seed,
            first_seed=ksm_seed,
            runs=done,
            strategy=strategy,
            bugs=bugset,
            failure_class=f.get("class"),
            message=f.get("message"),
            replay=replay,
            artifact=artifact,
            steps=res.steps,
            reproduced=reproduced_text(res),
            nodeid=request.node.nodeid,
            base_seed=base,
            failure=f or None,
            result=res,
        )
        verdicts.append(v)
        return v

    return run


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that ran scenarios gets a 'ksmstress' section: each run's verdict, replay and rerun lines."""
    outcome = yield
    report = outcome.get_result()
    verdicts = item.stash.get(VERDICTS_KEY, None)
    if verdicts and report.failed and report.when == "call":
        report.sections.append(("ksmstress", "\n".join(v.describe() for v in verdicts)))
