"""The one YAML config: a pydantic model per section, loaded with precise, user-readable errors.

Every key has a default, so the gateway runs on its embedded defaults with no file at all; `config/otagw.yaml`
documents the same defaults (a test keeps the two equal). Unknown keys, wrong types and bad values raise
`ConfigError` naming the file, the key path and what was expected.

Sections: top-level `data_dir`, `log`, `images` (image sources), `policy`, `matter`, `zigbee`, `api`.
Each section's model is owned by the part of the gateway that uses it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated strictly."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------- log
class LogConfig(Section):
    json_format: bool = Field(False, alias="json", description="one JSON object per log line")
    level: Literal["debug", "info", "warning", "error"] = "info"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ------------------------------------------------------------------------------------------ images
class ImagesConfig(Section):
    directories: list[Path] = Field(default_factory=list, description="directories imported at start-up")
    ota_image_lists: list[Path] = Field(default_factory=list, description="CHIP --otaImageList JSON files")
    z2m_indexes: list[Path] = Field(default_factory=list, description="Zigbee2MQTT OTA index files")
    max_upload_mib: int = Field(64, ge=1, le=4096)


# ------------------------------------------------------------------------------------------ policy
class PolicyConfig(Section):
    """Update policy: which image, when and for whom (rules, windows, budgets)."""

    # owned by gateway/core/policy.py

    callback_interval_s: int = Field(86400, ge=60, description="NotAvailable: when a device should ask again")
    busy_retry_s: int = Field(120, ge=1, description="Busy: when a device held back should retry")
    verify_deadline_s: int = Field(1800, ge=10, description="time for a device to report the new version")
    stale_transfer_s: int = Field(3600, ge=10, description="an in-flight transfer silent this long expires")
    allow_downgrade: bool = False


# ------------------------------------------------------------------------------------------ matter
class MatterConfig(Section):
    """Matter OTA Provider node on the gateway's own fabric."""

    # owned by adapters/matter

    enabled: bool = True
    port: int = Field(5540, ge=0, le=65535, description="UDP port of the provider node (0 = any)")
    interfaces: list[str] = Field(default_factory=list, description="DNS-SD interfaces (empty = all)")


# ------------------------------------------------------------------------------------------ zigbee
class ZigbeeRadioConfig(Section):
    type: Literal["ezsp", "znp", "deconz", "zigate", "xbee"] = "ezsp"
    device: str = "/dev/ttyUSB0"
    baudrate: int = Field(115200, gt=0)
    flow_control: Literal["hardware", "software"] | None = None


class ZigbeeConfig(Section):
    """Zigbee OTA Upgrade server on zigpy (radio, pacing, block sizes)."""

    # owned by adapters/zigbee

    enabled: bool = False
    radio: ZigbeeRadioConfig = Field(default_factory=ZigbeeRadioConfig)


# --------------------------------------------------------------------------------------------- api
class ApiConfig(Section):
    """HTTP API, dashboard and metrics."""

    # owned by gateway/api

    enabled: bool = True
    listen: str = Field("127.0.0.1:8480", description="HOST:PORT")
    token: str | None = Field(None, description="bearer token; generated into data_dir on first run if unset")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if (
            not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+|[0-9a-fA-F:]+):\d{1,5}", v)
            or int(v.rsplit(":", 1)[1]) > 65535
        ):
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8480 or [::1]:8480")
        return v


# ------------------------------------------------------------------------------------------- root
class Config(Section):
    data_dir: Path = Field(Path("otagw-data"), description="catalog, blobs, device state, keys")
    log: LogConfig = Field(default_factory=LogConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    matter: MatterConfig = Field(default_factory=MatterConfig)
    zigbee: ZigbeeConfig = Field(default_factory=ZigbeeConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)

    source: Path | None = Field(None, exclude=True, description="file this config was loaded from")


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file, key path and expectation."""


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that owns the key at `loc` (to list valid keys for an unknown one)."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model if isinstance(model, type) else None


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = f"{source}: {_loc(loc)}"
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            keys = sorted(
                (f.alias or name)
                for name, f in (model.model_fields.items() if model else [])
                if not f.exclude
            )
            lines.append(f"{where}: unknown key; expected one of: {', '.join(keys)}")
        else:
            got = err.get("input")
            lines.append(f"{where}: {err['msg']} (got {got!r})")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate an already-parsed YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of sections, got {type(data).__name__}")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
    if base_dir is not None and not cfg.data_dir.is_absolute():
        cfg = cfg.model_copy(update={"data_dir": base_dir / cfg.data_dir})
    return cfg


def load_config(path: Path | None) -> Config:
    """Load `path`, or the embedded defaults when None. Relative paths resolve against the file's folder."""
    if path is None:
        return parse_config({}, "<defaults>")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML at {where}: {problem}") from None
    cfg = parse_config(data, str(path), base_dir=path.resolve().parent)
    return cfg.model_copy(update={"source": path})


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    dumped = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()


def _render_model(model: BaseModel, indent: int) -> list[str]:
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        if field.exclude:
            continue
        key = field.alias or name
        value = getattr(model, name)
        if field.description:
            lines.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            doc = (type(value).__doc__ or "").strip().splitlines()
            if doc and not field.description and indent == 0:
                lines.append(f"{pad}# {doc[0]}")
            lines.append(f"{pad}{key}:")
            lines.extend(_render_model(value, indent + 1))
        else:
            dumped = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
            if isinstance(dumped, list) and dumped and isinstance(dumped[0], BaseModel):
                dumped = [v.model_dump(mode="json", by_alias=True) for v in dumped]
            lines.append(f"{pad}{key}: {_yaml_scalar(dumped)}")
    return lines


def render_default_yaml() -> str:
    """The documented default config (written to config/otagw.yaml; a test keeps the two equal)."""
    header = [
        "# otagw configuration: every key shown with its default value.",
        "# Generated by `python -m gateway.config` from the config models; relative paths resolve against",
        "# this file's folder. Unknown keys are errors.",
        "",
    ]
    return "\n".join(header + _render_model(Config(), 0)) + "\n"


if __name__ == "__main__":
    print(render_default_yaml(), end="")
