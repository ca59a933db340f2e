"""Config loading: embedded defaults, the documented default file, and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_embedded_defaults_load() -> None:
    cfg = load_config(None)
    assert cfg.api.listen.startswith("127.0.0.1:")
    assert cfg.zigbee.enabled is False


def test_documented_default_file_equals_embedded_defaults() -> None:
    """config/otagw.yaml documents the defaults: loading it must give exactly the embedded config."""
    documented = load_config(REPO / "config" / "otagw.yaml")
    embedded = parse_config({}, "<defaults>", base_dir=(REPO / "config").resolve())
    assert documented.model_dump(exclude={"source"}) == embedded.model_dump(exclude={"source"})


def test_relative_data_dir_resolves_against_config_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data_dir: state\n")
    assert load_config(f).data_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("matter:\n  portt: 1\n", "matter.portt: unknown key; expected one of:"),
        ("api:\n  listen: nonsense\n", "api.listen: Value error, expected HOST:PORT"),
        ("matter:\n  port: 70000\n", "matter.port: Input should be less than or equal to 65535"),
        ("zigbee:\n  radio:\n    type: ember9\n", "zigbee.radio.type: Input should be"),
        ("bogus: 1\n", "bogus: unknown key; expected one of: api, data_dir"),
        ("- a\n- b\n", "(top level): expected a mapping"),
        ("matter: [1\n", "invalid YAML at line"),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, yaml_text: str, expected: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert str(f) in msg
    assert expected in msg


def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("matter:\n  portt: 1\n")
    result = CliRunner().invoke(main, ["-c", str(f), "image", "list"])
    # `image list` needs the config; whichever command loads it must fail cleanly
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "matter.portt" in result.output


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_listen_env_overrides_api_listen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("api:\n  listen: 127.0.0.1:8480\n")
    monkeypatch.setenv("OTAGW_API_LISTEN", "[::]:9000")
    assert load_config(f).api.listen == "[::]:9000"
    assert load_config(None).api.listen == "[::]:9000"
    monkeypatch.setenv("OTAGW_API_LISTEN", "everywhere")
    with pytest.raises(ConfigError, match="OTAGW_API_LISTEN='everywhere': expected HOST:PORT"):
        load_config(f)


def test_config_not_utf8_is_a_config_error_naming_file_and_byte_offset(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_bytes(b"data_dir: x\n# \xc8\xff\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8 text: byte offset 14"):
        load_config(f)
    result = CliRunner().invoke(main, ["-c", str(f), "image", "list"])
    assert result.exit_code == 2, result.output
    assert "UnicodeDecodeError" not in result.output and "internal error" not in result.output
    assert "bad.yaml" in result.output and "byte offset 14" in result.output


@pytest.mark.parametrize("command", ["import-list", "import-z2m-index"])
def test_cli_import_file_not_utf8_exits_2_naming_file_and_byte(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n")
    bad = tmp_path / "list.json"
    bad.write_bytes(b'{"a": "\xc8\xff"}')
    result = CliRunner().invoke(main, ["-c", str(cfg), "image", command, str(bad)])
    assert result.exit_code == 2, result.output
    assert "internal error" not in result.output
    assert "list.json" in result.output and "byte 7" in result.output
