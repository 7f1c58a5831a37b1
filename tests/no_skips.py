"""A pytest plugin: with ``REGCORE_NO_SKIP=1`` (CI sets it), a skipped test or test module is a failure.

Locally a test whose dependency is missing (a browser, an optional package) may skip; in CI a skip
would hide that the dependency was never installed, so it fails, naming the reason it gave. Loaded
by ``tests/conftest.py``; ``pytest -p no_skips`` loads it anywhere.
"""

from __future__ import annotations

import os

import pytest

VARIABLE = "REGCORE_NO_SKIP"


def _forbidden() -> bool:
    return os.environ.get(VARIABLE) == "1"


def _fail(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped, but {VARIABLE}=1 forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = (yield).get_result()
    if _forbidden() and report.skipped and not hasattr(report, "wasxfail"):
        _fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = (yield).get_result()
    if _forbidden() and report.skipped:  # pytest.importorskip or pytest.skip at module level
        _fail(report)
