"""`publish:` config errors name the key path and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config


def load(tmp_path: Path, text: str) -> None:
    f = tmp_path / "otagw.yaml"
    f.write_text(text)
    load_config(f)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("publish:\n  controllers:\n  - {name: a, kind: z2m}\n",
         "publish.controllers[0]: Value error, credential: required when access is 'token'"),
        ("publish:\n  controllers:\n  - {name: a, kind: zigpy, access: open, bridge: {host: h}}\n",
         "bridge: only a z2m controller publishes bridge/devices"),
        ("publish:\n  controllers:\n  - {name: a, kind: z2m, access: open}\n  - {name: a, kind: zigpy, access: open}\n",
         "controllers[1].name: 'a' is used by an earlier controller"),
        ("publish:\n  controllers:\n  - {name: a, kind: zha, access: open}\n",
         "publish.controllers[0].kind"),
        ("publish:\n  base_url: otagw.lan\n", "publish.base_url"),
        ("publish:\n  controllers:\n  - {name: A/B, kind: z2m, access: open}\n", "publish.controllers[0].name"),
    ],
)
def test_publish_config_errors(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, yaml_text)
    assert message in str(exc.value)
    assert "otagw.yaml" in str(exc.value)
