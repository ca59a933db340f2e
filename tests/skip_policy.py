"""Skips are failures unless their reason is on the allow-list (tests/skip_allowlist.txt).

A test that silently skips hides a code path nobody runs (a fresh clone once skipped the 13 real-firmware tests
without a word). The hooks here collect every skip's reason; at the end of the session any reason that matches
no allow-list pattern is printed and the run's exit status becomes 1. Wired in by tests/conftest.py.

Allow-list format: one shell-style pattern (fnmatch) per line, matched against the whole skip reason; `#` starts
a comment; blank lines are ignored. Env `OTAGW_SKIP_ALLOWLIST` points at another file (the policy's own tests).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).resolve().parent / "skip_allowlist.txt"


def load_allowlist(path: Path | None = None) -> list[str]:
    path = path or Path(os.environ.get("OTAGW_SKIP_ALLOWLIST") or ALLOWLIST)
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pattern = line.split("#", 1)[0].strip()
        if pattern:
            patterns.append(pattern)
    return patterns


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def allowed(reason: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(reason, p) for p in patterns)


class SkipPolicy:
    """The plugin: collects unlisted skips, reports them, fails the run."""

    def __init__(self) -> None:
        self.patterns = load_allowlist()
        self.unlisted: list[tuple[str, str]] = []

    def _check(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = skip_reason(report)
            if not allowed(reason, self.patterns):
                self.unlisted.append((report.nodeid, reason))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._check(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._check(report)  # a module-level skip / importorskip skips the whole file at collection

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.unlisted and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.unlisted:
            terminalreporter.section(
                "skips not on the allow-list (tests/skip_allowlist.txt): run failed", red=True
            )
            for nodeid, reason in self.unlisted:
                terminalreporter.line(f"{nodeid}: {reason}")


def register(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(), "otagw_skip_policy")
