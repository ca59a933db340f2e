"""The skip policy: a skip whose reason is not on the allow-list fails the run; listed reasons do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.skip_policy import ALLOWLIST, allowed, load_allowlist

pytest_plugins = ["pytester"]

CONFTEST = "from tests.skip_policy import register\n\ndef pytest_configure(config):\n    register(config)\n"


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, allow: str, test: str
) -> pytest.RunResult:
    listed = pytester.path / "allow.txt"
    listed.write_text(allow)
    monkeypatch.setenv("OTAGW_SKIP_ALLOWLIST", str(listed))
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider")


def test_unlisted_skip_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(
        pytester,
        monkeypatch,
        "shared fixtures not present\n",
        "import pytest\n\ndef test_a():\n    pytest.skip('node missing')\n\ndef test_b():\n    pass\n",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skips not on the allow-list*", "*test_a*: node missing"])


def test_unlisted_module_level_skip_fails_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _run(pytester, monkeypatch, "", "import pytest\npytest.importorskip('no_such_module_xyz')\n")
    assert result.ret != pytest.ExitCode.OK


def test_listed_skip_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(
        pytester,
        monkeypatch,
        "# comment\nshared fixtures not present  # why\nchip SDK unavailable: *\n",
        "import pytest\n\ndef test_a():\n    pytest.skip('shared fixtures not present')\n\n"
        "@pytest.mark.skipif(True, reason='chip SDK unavailable: no module')\ndef test_b():\n    pass\n",
    )
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(skipped=2)


def test_repo_allowlist_is_narrow() -> None:
    patterns = load_allowlist(ALLOWLIST)
    assert allowed("shared fixtures not present", patterns)
    assert not allowed("node or tests/js/node_modules (matter.js) missing", patterns)
    assert not allowed("anything", patterns) and "*" not in patterns
    assert Path(ALLOWLIST).name == "skip_allowlist.txt"
