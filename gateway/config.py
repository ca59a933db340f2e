"""The one YAML config: a pydantic model per section, loaded with precise, user-readable errors.

Every key has a default, so the gateway runs on its embedded defaults with no file at all; `config/otagw.yaml`
documents the same defaults (a test keeps the two equal). Unknown keys, wrong types and bad values raise
`ConfigError` naming the file, the key path and what was expected.

Sections: top-level `data_dir`, `gateway` (fleet identity), `store` (state backend), `log`, `images` (image
sources), `policy`, `matter`, `zigbee`, `api`, `metrics`, `mqtt` (Home Assistant over MQTT discovery).
Each section's model is owned by the part of the gateway that uses it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


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
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
VersionSpec = int | str


def _int_or_hex(v: Any) -> Any:
    """Accept 4476, "4476" and "0x117c" alike (YAML users write ids both ways)."""
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            raise ValueError(f"expected an integer like 4476 or 0x117C, got {v!r}") from None
    return v


def _as_list(v: Any) -> Any:
    return [v] if v is not None and not isinstance(v, list) else v


class PolicySelector(Section):
    """Which devices a rule or rollout covers. Every key set must match; a list matches any of its items.

    `model` and `devices` take shell-style patterns (`TRADFRI*`, `zigbee:pan:1a2b:*`); `tags` needs every tag.
    """

    protocol: Literal["matter", "zigbee"] | None = None
    vendor_id: list[int] | None = Field(None, description="Matter VendorID / Zigbee manufacturer code")
    product_id: list[int] | None = Field(None, description="Matter ProductID / Zigbee image type")
    model: list[str] | None = None
    devices: list[str] | None = Field(None, description="device ids (protocol:network:address:endpoint)")
    networks: list[str] | None = Field(None, description="e.g. pan:1a2b or fabric:<cfid hex>")
    tags: list[str] | None = None

    @field_validator("vendor_id", "product_id", mode="before")
    @classmethod
    def _ids(cls, v: Any) -> Any:
        v = _as_list(v)
        return [_int_or_hex(x) for x in v] if isinstance(v, list) else v

    @field_validator("model", "devices", "networks", "tags", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _as_list(v)


class PolicyRule(Section):
    """One policy rule. Matching rules apply in file order; a later rule's keys override an earlier one's,
    except `block_versions`, which accumulate. Unset keys (null) leave the value from earlier rules/defaults.

    Version specs: an integer (numeric version), ">=N" / ">N" / "<=N" / "<N" / "==N", "A..B" (inclusive numeric
    range) or a shell pattern over the version string ("1.2.*").
    """

    name: str | None = None
    match: PolicySelector = Field(default_factory=PolicySelector)
    allow_versions: list[VersionSpec] | None = Field(None, description="only these versions may be offered")
    block_versions: list[VersionSpec] = Field(default_factory=list, description="never offer these versions")
    pin_version: VersionSpec | None = Field(
        None, description="offer exactly this version (numeric or string)"
    )
    allow_downgrade: bool | None = None
    require_consent: bool | None = None
    auto_approve: bool | None = Field(
        None,
        description="offer images you added without approving each (false: only approved images, "
        "rollouts and pins update)",
    )
    download_window: str | None = Field(None, description="name in policy.windows, or 'always'")
    apply_window: str | None = Field(None, description="name in policy.windows, or 'always'")
    allow_unvalidated_payload: bool | None = Field(
        None, description="offer images whose payload format has no validator (see policy section)"
    )
    min_battery_percent: int | None = Field(
        None, ge=0, le=100, description="battery devices below this are deferred (0 = no minimum)"
    )
    verify_deadline_s: int | None = Field(
        None, ge=10, description="time to be heard again on the new version after an apply (per vendor)"
    )


class TimeWindow(Section):
    """A recurring local-time window. `end` <= `start` crosses midnight; `days` names the day the window opens."""

    days: list[Weekday] = Field(default_factory=lambda: list(_DAYS))  # type: ignore[arg-type]
    start: str = Field("00:00", description="HH:MM local time")
    end: str = Field("24:00", description="HH:MM local time (24:00 = end of day)")
    timezone: str | None = Field(None, description="IANA zone, e.g. Europe/Berlin; default policy.timezone")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", v)
        if (
            not m
            or int(m.group(1)) > 24
            or int(m.group(2)) > 59
            or (int(m.group(1)) == 24 and m.group(2) != "00")
        ):
            raise ValueError("expected HH:MM between 00:00 and 24:00")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return _check_tz(v) if v is not None else v


def _check_tz(v: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {v!r} (expected an IANA name like Europe/Berlin or UTC)"
        ) from None
    return v


class BudgetConfig(Section):
    """Concurrent transfers allowed; devices beyond a budget get Busy/Wait with a retry time, never an error."""

    global_: int = Field(16, alias="global", ge=1, description="transfers at once, all protocols")
    per_protocol: dict[Literal["matter", "zigbee"], int] = Field(default_factory=dict)
    per_network: dict[str, int] = Field(default_factory=dict, description="e.g. {'epid:00124b0001020304': 1} (Zigbee: the extended PAN id)")
    per_network_default: int | None = Field(
        4, ge=1, description="per Zigbee PAN / Matter fabric unless listed"
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)

    @field_validator("per_protocol", "per_network")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if n < 1:
                raise ValueError(f"budget for {k!r} must be >= 1, got {n}")
        return v


class PolicyConfig(Section):
    """Update policy: rules, time windows, concurrency budgets, timers."""

    # owned by gateway/core/policy.py

    callback_interval_s: int = Field(86400, ge=60, description="NotAvailable: when a device should ask again")
    busy_retry_s: int = Field(120, ge=1, description="Busy: when a device held back should retry")
    verify_deadline_s: int = Field(1800, ge=10, description="time for a device to report the new version")
    stale_transfer_s: int = Field(3600, ge=10, description="an in-flight transfer silent this long expires")
    allow_downgrade: bool = False
    auto_approve: bool = Field(
        False,
        description="offer images you added without approving each (opt-in); "
        "false: only approved images and rollouts update devices",
    )
    auto_approve_sources: list[str] = Field(
        default_factory=list, description="firmware sources (names in `sources`) whose images start approved"
    )
    require_consent: bool = False
    timezone: str = Field("UTC", description="default zone for windows")
    windows: dict[str, TimeWindow] = Field(default_factory=dict, description="named recurring windows")
    download_window: str | None = Field(None, description="window name for downloads (null = any time)")
    apply_window: str | None = Field(None, description="window name for installing (null = any time)")
    max_apply_delay_s: int = Field(
        86400, ge=0, description="longer apply delays are sent as AwaitNextAction and asked again"
    )
    retry_backoff_s: int = Field(300, ge=0, description="after a failure, wait this long (doubling) to retry")
    max_attempts: int = Field(
        5,
        ge=1,
        description="consecutive failed episodes of one image before the device is parked as failed "
        "(offered again only after `otagw devices retry` or a new image)",
    )
    allow_unvalidated_payload: bool = Field(
        True,
        description="offer images whose payload format has no validator (not Silicon Labs EBL/GBL); like "
        "Zigbee2MQTT and zigpy. Invalid payloads are never offered",
    )
    min_battery_percent: int = Field(
        30, ge=0, le=100, description="battery-powered devices below this are deferred; mains devices never"
    )
    progress_persist_s: float = Field(5.0, ge=0, description="write transfer offsets at most this often")
    sweep_interval_s: float = Field(30.0, gt=0, description="how often timers are checked")
    rules: list[PolicyRule] = Field(default_factory=list)
    budgets: BudgetConfig = Field(default_factory=BudgetConfig)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_tz(v)

    @model_validator(mode="after")
    def _window_names(self) -> PolicyConfig:
        known = set(self.windows) | {"always"}
        refs = [("download_window", self.download_window), ("apply_window", self.apply_window)]
        for i, rule in enumerate(self.rules):
            refs += [(f"rules[{i}].download_window", rule.download_window)]
            refs += [(f"rules[{i}].apply_window", rule.apply_window)]
        for where, name in refs:
            if name is not None and name not in known:
                raise ValueError(f"{where}: unknown window {name!r}; defined: {', '.join(sorted(known))}")
        return self


# ------------------------------------------------------------------------------------------ matter
class MatterTestMode(Section):
    """Provider test mode: the knobs of the CHIP reference ota-provider-app (reference 002), per device or global.

    Like the reference app, `query_status`, `apply_action`, the delays and `user_consent_state` apply to the first
    response only (then normal behaviour) unless `first_only` is false. `ignore_*` drop that many commands
    without a response.
    """

    query_status: Literal["update_available", "busy", "not_available"] | None = None
    apply_action: Literal["proceed", "await_next_action", "discontinue"] | None = None
    delayed_query_action_time_s: int | None = Field(None, ge=0, le=0xFFFF_FFFF)
    delayed_apply_action_time_s: int | None = Field(None, ge=0, le=0xFFFF_FFFF)
    user_consent_needed: bool = Field(False, description="UserConsentNeeded when the requestor can consent")
    user_consent_state: Literal["granted", "denied", "deferred"] | None = None
    ignore_query_image: int = Field(0, ge=0, description="QueryImage commands to leave unanswered")
    ignore_apply_update: int = Field(0, ge=0, description="ApplyUpdateRequest commands to leave unanswered")
    first_only: bool = Field(True, description="knobs shape only the first response, as in the reference app")


class MatterConfig(Section):
    """Matter OTA Provider node on the gateway's own fabric."""

    # owned by adapters/matter

    enabled: bool = True
    port: int = Field(5540, ge=0, le=65535, description="UDP port of the provider node (0 = any)")
    interfaces: list[str] = Field(default_factory=list, description="DNS-SD interfaces (empty = all)")
    # --- fabric admin + provider identity (owned by adapters/matter/adapter.py, fabric/admin.py)
    node_id: int = Field(
        0x0000_0000_0A11_0001,
        ge=1,
        le=0xFFFF_FFEF_FFFF_FFFF,
        description="operational node id of the provider node on the gateway's fabric",
    )
    fabric_id: int = Field(1, ge=1, description="fabric id of the gateway's own fabric")
    vendor_id: int = Field(0xFFF1, ge=0, le=0xFFFE, description="admin vendor id written into the fabric")
    controller_node_id: int = Field(
        112233,
        ge=1,
        le=0xFFFF_FFEF_FFFF_FFFF,
        description="node id of the fabric admin (chip SDK controller)",
    )
    paa_trust_store: Path | None = Field(
        None, description="directory of PAA certificates (DER) for attestation"
    )
    announce: bool = Field(True, description="send AnnounceOTAProvider when an update is due for a node")
    announce_check_s: float = Field(
        15.0, gt=0, le=86400, description="how often the plan is checked for nodes to announce to"
    )
    max_transfers: int = Field(64, ge=1, description="concurrent BDX transfers the provider serves")
    bdx_block_size: int = Field(1024, ge=64, le=8192, description="max BDX block size offered")
    test_mode: MatterTestMode | None = Field(
        None, description="reference-provider test knobs for every requestor"
    )
    test_mode_devices: dict[str, MatterTestMode] = Field(
        default_factory=dict, description="per-requestor test knobs, keyed by node id (decimal or 0x hex)"
    )

    @field_validator("test_mode_devices", mode="before")
    @classmethod
    def _node_id_keys(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        out: dict[str, Any] = {}
        for k, knobs in v.items():
            try:
                nid = k if isinstance(k, int) else int(str(k), 0)
            except ValueError:
                raise ValueError(
                    f"test_mode_devices: key {k!r} is not a node id (decimal or 0x hex)"
                ) from None
            if not 1 <= nid <= 0xFFFF_FFEF_FFFF_FFFF:
                raise ValueError(f"test_mode_devices: node id {k!r} outside the operational range")
            out[f"{nid:016X}"] = knobs
        return out

    def test_mode_for(self, node_id: int) -> MatterTestMode | None:
        """The knobs for one requestor: its own entry, else the global one, else None."""
        return self.test_mode_devices.get(f"{node_id:016X}", self.test_mode)


# ------------------------------------------------------------------------------------------ zigbee
class ZigbeeRadioConfig(Section):
    type: Literal["ezsp", "znp", "deconz", "zigate", "xbee"] = Field(
        "ezsp",
        description="ezsp: Silicon Labs (bellows, built in); znp: TI Z-Stack, deconz: ConBee/RaspBee, zigate, "
        "xbee: install the extra of that name (pip install 'otagw[znp]')",
    )
    device: str = Field(
        "/dev/ttyUSB0", description="serial path, or socket://HOST:PORT for a networked radio"
    )
    baudrate: int = Field(115200, gt=0)
    flow_control: Literal["hardware", "software"] | None = None
    startup_timeout_s: float = Field(60.0, gt=0, description="give up starting the radio after this long")


class ZigbeeRadioEntry(ZigbeeRadioConfig):
    """One of several radios (`zigbee.radios`), each coordinator of its own network."""

    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="short name: logs, health, `--radio`"
    )
    database: str | None = Field(
        None, description="its zigpy database in data_dir (default zigbee-<name>.db)"
    )


class ZigbeeBlockCap(Section):
    """Largest Image Block data size served to one manufacturer (optionally one model)."""

    manufacturer: int = Field(..., ge=0, le=0xFFFF, description="Zigbee manufacturer code")
    model: str | None = Field(None, description="Basic cluster model id; unset = every model")
    max_block_bytes: int = Field(..., ge=1, le=255)


class ZigbeeStallTimeout(Section):
    """How long one manufacturer's devices may go silent mid-download before the transfer counts as stalled."""

    manufacturer: int = Field(..., ge=0, le=0xFFFF)
    timeout_s: float = Field(..., gt=0)


class ZigbeeConfig(Section):
    """Zigbee OTA Upgrade server on zigpy: radio, block sizes, pacing, stalls, notify, apply read-back."""

    # owned by adapters/zigbee

    enabled: bool = False
    radio: ZigbeeRadioConfig = Field(default_factory=ZigbeeRadioConfig)
    radios: list[ZigbeeRadioEntry] = Field(
        default_factory=list,
        description="several radios in one gateway, each its own network with its own per-network budget "
        "(empty: the single `radio` above)",
    )
    database: str = Field("zigbee.db", description="zigpy's device database, a file name inside data_dir")
    default_max_block_bytes: int = Field(64, ge=1, le=255, description="block size cap when no rule matches")
    block_size_caps: list[ZigbeeBlockCap] = Field(default_factory=list, description="per manufacturer/model")
    min_learned_block_bytes: int = Field(
        32, ge=1, le=255, description="floor for caps learned from devices that fail with a block size"
    )
    stall_timeout_s: float = Field(60.0, gt=0, description="silence mid-download that counts as a stall")
    stall_timeouts: list[ZigbeeStallTimeout] = Field(default_factory=list, description="per manufacturer")
    min_block_period_ms: int = Field(
        0, ge=0, le=0xFFFF, description="pacing: MinimumBlockPeriod pushed to devices (0 = no pacing)"
    )
    page_response_spacing_min_ms: int = Field(0, ge=0, le=0xFFFF, description="floor for Image Page spacing")
    notify_query_jitter: int = Field(100, ge=1, le=100, description="QueryJitter sent in Image Notify")
    notify_interval_s: float = Field(
        300.0, gt=0, description="how often devices with an update due (and not yet offered) get Image Notify"
    )
    notify_broadcast_threshold: int = Field(
        10, ge=1, description="notify this many devices or more with one broadcast instead of unicasts"
    )
    reboot_wait_s: float = Field(
        60.0, ge=0, description="after the upgrade time, wait this long before reading the version back"
    )
    readback_attempts: int = Field(3, ge=0, description="version read-back attempts after an upgrade")
    apply_recheck_s: float = Field(
        60.0, gt=0, description="when policy says 'wait', ask it again this often (unless it says when)"
    )
    backup_interval_s: float = Field(
        86400.0,
        ge=0,
        description="write a network backup (Open ZigBee Coordinator Backup JSON, 0600) into "
        "data_dir/zigbee-backups this often (0 = never)",
    )
    backup_keep: int = Field(7, ge=1, description="automatic network backups kept (oldest deleted first)")

    @field_validator("radios")
    @classmethod
    def _unique_radios(cls, v: list[ZigbeeRadioEntry]) -> list[ZigbeeRadioEntry]:
        seen: set[str] = set()
        for entry in v:
            if entry.name in seen:
                raise ValueError(f"radio name {entry.name!r} used twice")
            seen.add(entry.name)
        devices = [e.device for e in v]
        if len(set(devices)) != len(devices):
            raise ValueError("two radios with the same device path")
        return v


# ------------------------------------------------------------------------------------------ publish
class BridgeMqttConfig(Section):
    """Where a Zigbee2MQTT controller publishes `<base_topic>/bridge/devices` (its own broker settings)."""

    host: str = Field(..., min_length=1, description="MQTT broker host the controller publishes to")
    port: int = Field(1883, ge=1, le=65535)
    base_topic: str = Field("zigbee2mqtt", min_length=1, description="Zigbee2MQTT's mqtt.base_topic")
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the broker password (owner-only)")
    client_id: str | None = Field(None, description="MQTT client id (default: otagw-<controller name>)")


class PublishController(Section):
    """One consuming controller (Zigbee2MQTT, ZHA/zigpy, python-matter-server): a network of its own in otagw.

    It sees an image only once policy offers it on the network named `name` (gateway/publish/staging.py)."""

    name: str = Field(
        ..., pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="network name of the controller's devices"
    )
    kind: Literal["z2m", "zigpy", "matter-server"]
    enabled: bool = True
    path: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="URL segment under /publish/ (default: name)"
    )
    access: Literal["token", "open"] = Field(
        "token", description="token: a catalog-read token in the URL; open: no token (trusted LAN only)"
    )
    credential: str | None = Field(
        None, description="name of the catalog-read credential (`otagw token create`) this controller uses"
    )
    bridge: BridgeMqttConfig | None = Field(
        None, description="z2m only: subscribe to its bridge/devices to observe its devices and versions"
    )

    @property
    def url_path(self) -> str:
        return self.path or self.name

    @model_validator(mode="after")
    def _access(self) -> PublishController:
        if self.access == "token" and not self.credential:
            raise ValueError("credential: required when access is 'token' (the catalog-read token's name)")
        if self.bridge is not None and self.kind != "z2m":
            raise ValueError("bridge: only a z2m controller publishes bridge/devices")
        return self


class PublishConfig(Section):
    """Publishing the approved catalog to other controllers (gateway/publish)."""

    base_url: str | None = Field(
        None, description="URL the controllers reach otagw's API at (default: http://<api.listen>)"
    )
    controllers: list[PublishController] = Field(default_factory=list)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", v):
            raise ValueError(f"expected an http(s) URL, got {v!r}")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _unique(self) -> PublishConfig:
        names: set[str] = set()
        paths: set[str] = set()
        for i, c in enumerate(self.controllers):
            if c.name in names:
                raise ValueError(f"controllers[{i}].name: {c.name!r} is used by an earlier controller")
            if c.url_path in paths:
                raise ValueError(f"controllers[{i}].path: {c.url_path!r} is used by an earlier controller")
            names.add(c.name)
            paths.add(c.url_path)
        return self


# --------------------------------------------------------------------------------------------- api
class ApiConfig(Section):
    """HTTP API, dashboard and metrics."""

    # owned by gateway/api

    enabled: bool = True
    listen: str = Field("127.0.0.1:8480", description="HOST:PORT")
    token: str | None = Field(None, description="bearer token; generated into data_dir on first run if unset")
    max_event_clients: int = Field(
        32, ge=1, le=10000, description="open /api/v1/events streams at once; more get 503 with Retry-After"
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if (
            not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+|[0-9a-fA-F:]+):\d{1,5}", v)
            or int(v.rsplit(":", 1)[1]) > 65535
        ):
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8480 or [::1]:8480")
        return v


# ----------------------------------------------------------------------------------------- metrics
class MetricsConfig(Section):
    """Who may scrape `/metrics`. Never the admin token's business: Prometheus gets its own credential."""

    # owned by gateway/api (auth + metrics)

    auth: Literal["token", "open"] = Field(
        "token",
        description="token: Bearer <metrics token> (OTAGW_METRICS_TOKEN, or <data_dir>/metrics-token, 0600, "
        "generated on first run); open: anyone who reaches api.listen may scrape",
    )


# -------------------------------------------------------------------------------------------- mqtt
_MQTT_URL = re.compile(r"(mqtts?)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)(?::(\d{1,5}))?/?")
_TOPIC_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*")


class MqttConfig(Section):
    """Home Assistant over MQTT discovery: one `update` entity per device, gateway sensors, install button."""

    # owned by gateway/integrations/mqtt

    enabled: bool = False
    broker: str = Field(
        "mqtt://127.0.0.1:1883",
        description="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS, default port 8883)",
    )
    client_id: str = Field("otagw", min_length=1, max_length=64, description="MQTT client identifier")
    username: str | None = None
    password_file: Path | None = Field(
        None, description="file holding the broker password (owner-only); env OTAGW_MQTT_PASSWORD wins"
    )
    tls_ca_file: Path | None = Field(None, description="CA bundle for mqtts:// (unset: the system's CAs)")
    tls_cert_file: Path | None = Field(None, description="client certificate (PEM) for mqtts://")
    tls_key_file: Path | None = Field(None, description="client certificate's private key (PEM)")
    tls_insecure: bool = Field(
        False, description="skip the broker host name check (self-signed test brokers)"
    )
    base_topic: str = Field("otagw", description="otagw's own topics live under this prefix")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix")
    allow_install: bool = Field(
        True, description="Home Assistant's install button starts a single-device rollout (false: refused)"
    )
    state_interval_s: float = Field(
        2.0, ge=0, description="while a transfer runs, publish a device's state at most this often"
    )
    gateway_interval_s: float = Field(30.0, gt=0, description="refresh of the gateway sensors")
    keepalive_s: int = Field(60, ge=5, le=65535)
    connect_timeout_s: float = Field(10.0, gt=0, description="give up a connection attempt after this long")
    reconnect_min_s: float = Field(1.0, gt=0, description="first reconnect delay (doubles up to the max)")
    reconnect_max_s: float = Field(60.0, gt=0)

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        m = _MQTT_URL.fullmatch(v)
        if not m or (m.group(3) and int(m.group(3)) > 65535):
            raise ValueError("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. mqtt://127.0.0.1:1883")
        return v

    @field_validator("base_topic", "discovery_prefix")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not _TOPIC_SEGMENT.fullmatch(v):
            raise ValueError(
                "expected topic levels of letters, digits, _ and - separated by / (no wildcards)"
            )
        return v

    @model_validator(mode="after")
    def _tls(self) -> MqttConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        tls_keys = self.tls_ca_file or self.tls_cert_file or self.tls_insecure
        if tls_keys and not self.tls:
            raise ValueError("TLS settings need an mqtts:// broker URL")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    @property
    def tls(self) -> bool:
        return self.broker.startswith("mqtts://")

    @property
    def host(self) -> str:
        m = _MQTT_URL.fullmatch(self.broker)
        assert m is not None
        return m.group(2).strip("[]")

    @property
    def port(self) -> int:
        m = _MQTT_URL.fullmatch(self.broker)
        assert m is not None
        return int(m.group(3)) if m.group(3) else (8883 if self.tls else 1883)


# ----------------------------------------------------------------------------------------- sources
SourceType = Literal[
    "z2m",
    "zigpy",
    "zigpy_ota",
    "ikea",
    "ledvance",
    "sonoff",
    "salus",
    "thirdreality",
    "inovelli",
    "dcl",
    "dcl_paa",
]


class SourceConfig(Section):
    """One upstream firmware source (owned by gateway/sources). Nothing is fetched unless `enabled`."""

    name: str = Field(
        ..., pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="unique name used by the CLI/API"
    )
    type: SourceType
    enabled: bool = False
    url: str | None = Field(None, description="index / API base URL (null: the type's well-known URL)")
    channel: Literal["stable", "beta", "dev"] | None = Field(None, description="zigpy_ota channel")
    check_interval_s: float = Field(86400.0, ge=60, description="how often the index is checked")
    jitter: float = Field(0.1, ge=0, le=1, description="checks spread by up to this share of the interval")
    timeout_s: float = Field(30.0, gt=0, description="per request (connect + whole body)")
    max_index_bytes: int = Field(16 << 20, ge=1024, description="larger index bodies are refused")
    max_image_bytes: int = Field(64 << 20, ge=1024, description="larger images are refused")
    download: Literal["matching", "manual"] = Field(
        "matching", description="matching: download images a device of the fleet can use; manual: on request"
    )
    mirror: dict[str, str] = Field(
        default_factory=dict,
        description="URL prefix rewrites (air-gapped mirrors), e.g. {'https://a/': 'http://m/a/'}",
    )
    models: list[str] = Field(
        default_factory=list,
        description="dcl: extra VID:PID pairs to follow (hex, e.g. 131B:0002) beyond the fleet",
    )

    @field_validator("models")
    @classmethod
    def _vid_pid(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}", item):
                raise ValueError(f"expected VID:PID in hex like 131B:0002, got {item!r}")
        return v

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"https?://[^/\s]+", v):
            raise ValueError(f"expected an http(s) URL, got {v!r}")
        return v


def _default_sources() -> list[SourceConfig]:
    """The well-known sources, all disabled: enabling one is one line (`enabled: true`)."""
    return [
        SourceConfig(name="z2m", type="z2m"),
        SourceConfig(name="zigpy-ota", type="zigpy_ota", channel="stable"),
        SourceConfig(name="ikea", type="ikea"),
        SourceConfig(name="ledvance", type="ledvance"),
        SourceConfig(name="sonoff", type="sonoff"),
        SourceConfig(name="dcl", type="dcl"),
        SourceConfig(name="dcl-test-net", type="dcl", url="https://on.test-net.dcl.csa-iot.org"),
        SourceConfig(name="paa", type="dcl_paa"),
    ]


# ------------------------------------------------------------------------------------------ fleet
_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class GatewayConfig(Section):
    """Who this gateway is in a fleet (owned by gateway/fleet). One gateway on SQLite can keep the defaults."""

    id: str = Field("gw-1", pattern=_NAME, description="unique id of this gateway within the fleet")
    site: str = Field("home", pattern=_NAME, description="site (home, building) this gateway serves")


class StoreConfig(Section):
    """Where device records, history and rollouts live (owned by gateway/core repositories)."""

    backend: Literal["sqlite", "postgres"] = Field(
        "sqlite", description="sqlite: <data_dir>/state.db, one gateway; postgres: shared by a fleet"
    )
    dsn: str | None = Field(
        None, description="postgres: postgresql://user:password@host:port/database (required for postgres)"
    )
    tls_mode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "prefer", description="postgres: TLS to the server (libpq sslmode semantics)"
    )
    tls_ca_file: Path | None = Field(
        None, description="postgres: CA bundle that signs the server certificate"
    )
    tls_cert_file: Path | None = Field(None, description="postgres: client certificate (cert auth)")
    tls_key_file: Path | None = Field(None, description="postgres: client key (owner-only file)")
    pool_size: int = Field(4, ge=1, le=100, description="postgres: connections this gateway keeps at most")
    connect_timeout_s: float = Field(10.0, gt=0, description="postgres: per connection attempt")
    command_timeout_s: float = Field(30.0, gt=0, description="postgres: per statement")

    @field_validator("dsn")
    @classmethod
    def _postgres_dsn(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"postgres(ql)?://", v):
            raise ValueError("expected a postgresql:// URL, e.g. postgresql://otagw@db.example:5432/otagw")
        return v

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StoreConfig:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("dsn: required when backend is postgres")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file: given without tls_cert_file")
        return self


# ------------------------------------------------------------------------------------------- root
class Config(Section):
    data_dir: Path = Field(Path("otagw-data"), description="catalog, blobs, device state, keys")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    matter: MatterConfig = Field(default_factory=MatterConfig)
    zigbee: ZigbeeConfig = Field(default_factory=ZigbeeConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    sources: list[SourceConfig] = Field(
        default_factory=_default_sources,
        description="upstream firmware sources (gateway/sources); none is contacted unless enabled",
    )
    publish: PublishConfig = Field(
        default_factory=PublishConfig, description="catalog published to Zigbee2MQTT, ZHA, python-matter-server"
    )

    source: Path | None = Field(None, exclude=True, description="file this config was loaded from")

    @model_validator(mode="after")
    def _source_names(self) -> Config:
        seen: set[str] = set()
        for i, src in enumerate(self.sources):
            if src.name in seen:
                raise ValueError(f"sources[{i}].name: {src.name!r} is used by an earlier source")
            seen.add(src.name)
        unknown = [n for n in self.policy.auto_approve_sources if n not in seen]
        if unknown:
            raise ValueError(f"policy.auto_approve_sources: {unknown[0]!r} is not the name of a source")
        return self


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
    if not cfg.data_dir.is_absolute():
        # absolute from here on: workers (the chip SDK controller) run with another working directory
        cfg = cfg.model_copy(update={"data_dir": (base_dir or Path.cwd()).absolute() / cfg.data_dir})
    mqtt_files = {
        k: (base_dir or Path.cwd()).absolute() / v
        for k in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
        if (v := getattr(cfg.mqtt, k)) is not None and not v.is_absolute()
    }
    if mqtt_files:
        cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update=mqtt_files)})
    return cfg


LISTEN_ENV = "OTAGW_API_LISTEN"


def _listen_from_env(cfg: Config) -> Config:
    """`OTAGW_API_LISTEN=HOST:PORT` overrides `api.listen` (containers: choose the address at `docker run`)."""
    value = os.environ.get(LISTEN_ENV)
    if not value:
        return cfg
    try:
        ApiConfig(listen=value)
    except ValidationError:
        raise ConfigError(
            f"{LISTEN_ENV}={value!r}: expected HOST:PORT, e.g. 127.0.0.1:8480 or [::1]:8480"
        ) from None
    return cfg.model_copy(update={"api": cfg.api.model_copy(update={"listen": value})})


def load_config(path: Path | None) -> Config:
    """Load `path`, or the embedded defaults when None. Relative paths resolve against the file's folder.
    `OTAGW_API_LISTEN` overrides `api.listen`."""
    if path is None:
        return _listen_from_env(parse_config({}, "<defaults>"))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text: byte offset {exc.start} (0x{exc.object[exc.start]:02x}) {exc.reason}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML at {where}: {problem}") from None
    cfg = parse_config(data, str(path), base_dir=path.resolve().parent)
    return _listen_from_env(cfg.model_copy(update={"source": path}))


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
            if isinstance(value, list) and value and isinstance(value[0], SourceConfig):
                lines.extend(_render_sources(value, indent))
                continue
            dumped = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
            if isinstance(dumped, list) and dumped and isinstance(dumped[0], BaseModel):
                dumped = [v.model_dump(mode="json", by_alias=True) for v in dumped]
            lines.append(f"{pad}{key}: {_yaml_scalar(dumped)}")
    return lines


def _render_sources(sources: list[SourceConfig], indent: int) -> list[str]:
    """Sources as a block list showing only what differs from the defaults, so enabling one is one line."""
    pad = "  " * indent
    defaults = [
        f"{k}={_yaml_scalar(f.default)}"
        for k, f in SourceConfig.model_fields.items()
        if k not in ("name", "type", "enabled") and f.default_factory is None
    ]
    lines = [f"{pad}# per-source keys and defaults: {', '.join(defaults[:4])}"]
    lines += [f"{pad}#   {', '.join(defaults[i : i + 4])}" for i in range(4, len(defaults), 4)]
    lines += [f"{pad}#   mirror={{}} (URL prefix rewrites), models=[] (dcl: extra VID:PID to follow)"]
    lines.append(f"{pad}sources:")
    for src in sources:
        data = src.model_dump(mode="json", exclude_defaults=True)
        data["enabled"] = src.enabled
        first = True
        for key in ("name", "type", "enabled", *[k for k in data if k not in ("name", "type", "enabled")]):
            lines.append(f"{pad}{'- ' if first else '  '}{key}: {_yaml_scalar(data[key])}")
            first = False
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
