"""Zigbee network management in coordinator mode: form, back up, restore, permit joining, list and remove devices.

`NetworkManager(app, ...)` runs these operations on a connected zigpy `ControllerApplication` (the running
adapter's, or one the CLI opened itself when no gateway holds the radio). Backups are the Open ZigBee Coordinator
Backup JSON that Zigbee2MQTT and ZHA write (zigpy's `NetworkBackup.as_open_coordinator_json()`), so a user brings an
existing network over without re-pairing a device. Backup files are written atomically and owner-only (0600) —
they hold the network key — and `install_key_redaction()` keeps the key out of zigpy's and bellows' debug logs
(they print whole `NetworkInfo`/`NetworkBackup` objects). Automatic backups go to `<data_dir>/zigbee-backups/`,
`backup_keep` deep.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zigpy.config as zconf
import zigpy.exceptions
import zigpy.state
import zigpy.types as t
from zigpy.application import ControllerApplication
from zigpy.backups import NetworkBackup

LOGGER = logging.getLogger(__name__)

BACKUP_DIR = "zigbee-backups"
AUTO_BACKUP_PREFIX = "auto-"
MAX_PERMIT_S = 254  # the ZDO Mgmt_Permit_Joining_req maximum (255 would mean "forever")


class NetworkError(Exception):
    """A network operation cannot be done; the message says what and why (bad input or wrong state)."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict  # True: the network's state refuses it (409), else bad input (400)


# ------------------------------------------------------------------------------------------ backup files
def write_backup_file(path: Path, backup: NetworkBackup) -> None:
    """Write `backup` as Open Coordinator Backup JSON, owner-only, atomically (a reader never sees half a file)."""
    path = Path(path)
    data = json.dumps(backup.as_open_coordinator_json(), indent=2).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing tmp file keeps its mode through O_CREAT
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def parse_backup(data: Any, where: str) -> NetworkBackup:
    """An Open Coordinator Backup object -> NetworkBackup; NetworkError naming `where` and the missing key."""
    if not isinstance(data, dict):
        raise NetworkError(f"{where}: not an Open ZigBee Coordinator Backup (expected a JSON object)")
    meta = data.get("metadata")
    if not isinstance(meta, dict) or meta.get("format") != "zigpy/open-coordinator-backup":
        raise NetworkError(
            f"{where}: metadata.format is not 'zigpy/open-coordinator-backup' "
            "(an Open ZigBee Coordinator Backup as written by Zigbee2MQTT, ZHA or otagw)"
        )
    try:
        backup = NetworkBackup.from_open_coordinator_json(data)
    except KeyError as exc:
        raise NetworkError(f"{where}: missing key {exc.args[0]!r}") from None
    except (ValueError, TypeError) as exc:
        raise NetworkError(f"{where}: invalid value: {exc}") from None
    if not backup.is_complete():
        raise NetworkError(f"{where}: the backup is incomplete (no network key, PAN id or channel)")
    return backup


def read_backup_file(path: Path) -> NetworkBackup:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NetworkError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NetworkError(f"{path}: not valid JSON: {exc}") from None
    return parse_backup(data, str(path))


def secure_database(path: Path) -> None:
    """Create zigpy's database owner-only before zigpy opens it (SQLite gives its -wal/-shm the same mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists():
            os.chmod(p, 0o600)


# ------------------------------------------------------------------------------------------ key redaction
_REDACTED_KEY = t.KeyData(bytes(16))
_EPID_ZERO = t.ExtendedPanId(bytes(8))
_EPID_ALL = t.ExtendedPanId(b"\xff" * 8)


def _redact(arg: Any) -> Any:
    """`arg` with every key inside replaced by zeros (zigpy state objects, bellows command structs and dicts)."""
    if isinstance(arg, NetworkBackup):
        return arg.replace(network_info=_redact(arg.network_info))
    if isinstance(arg, zigpy.state.NetworkInfo):
        return arg.replace(
            network_key=arg.network_key.replace(key=_REDACTED_KEY),
            tc_link_key=arg.tc_link_key.replace(key=_REDACTED_KEY),
            key_table=[],
        )
    if isinstance(arg, zigpy.state.Key):
        return arg.replace(key=_REDACTED_KEY)
    if isinstance(arg, t.KeyData):
        return _REDACTED_KEY
    if isinstance(arg, dict):
        return {k: _redact(v) for k, v in arg.items()}
    if isinstance(arg, list | tuple):
        return type(arg)(_redact(v) for v in arg) if type(arg) in (list, tuple) else arg
    if isinstance(arg, t.Struct):
        fields = {f.name: getattr(arg, f.name) for f in arg.fields}
        redacted = {k: _redact(v) for k, v in fields.items()}
        if any(redacted[k] is not fields[k] for k in fields):
            return arg.replace(**redacted)
    return arg


class KeyRedactingFilter(logging.Filter):
    """Replaces network/link keys in log arguments with zeros before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(_redact(a) for a in record.args)
        return True


class FrameTraceFilter(logging.Filter):
    """bellows' ASH layer traces every frame's bytes at debug; EZSP frames carry the network key (formNetwork,
    exportKey, setInitialSecurityState), so the bytes are replaced by their length."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                f"<{len(a) // 2} bytes>"
                if isinstance(a, str) and len(a) > 8 and _is_hex(a)
                else f"<{type(a).__name__} {len(a.ezsp_frame)} bytes>"
                if hasattr(a, "ezsp_frame")
                else a
                for a in record.args
            )
        return True


class SqlTraceFilter(logging.Filter):
    """aiosqlite traces every statement with its parameters at debug; zigpy stores its network backups (key
    included) in its database, so those statements are elided."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                "<statement on network_backups elided: it holds the network key>"
                if "network_backups" in str(a)
                else a
                for a in record.args
            )
        return True


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


# zigpy/bellows modules that log NetworkInfo, NetworkBackup, Key objects or key-bearing EZSP commands (found by
# grepping their sources and by the key-leak test in tests/zigbee/ncp/test_network_management.py)
KEY_LOGGING_LOGGERS = (
    "zigpy.application",
    "zigpy.backups",
    "bellows.zigbee.application",
    "bellows.ezsp",
    "bellows.ezsp.protocol",
)
FRAME_TRACE_LOGGERS = ("bellows.ash", "bellows.uart")
_FILTER = KeyRedactingFilter()
_FRAME_FILTER = FrameTraceFilter()
_SQL_FILTER = SqlTraceFilter()


def install_key_redaction() -> None:
    loggers: tuple[tuple[tuple[str, ...], logging.Filter], ...] = (
        (KEY_LOGGING_LOGGERS, _FILTER),
        (FRAME_TRACE_LOGGERS, _FRAME_FILTER),
        (("aiosqlite",), _SQL_FILTER),
    )
    for names, filt in loggers:
        for name in names:
            logger = logging.getLogger(name)
            if filt not in logger.filters:
                logger.addFilter(filt)


# ------------------------------------------------------------------------------------------ operations
def _int_arg(value: Any, name: str, lo: int, hi: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = value if isinstance(value, int) else int(str(value), 0)
    except ValueError:
        raise NetworkError(f"{name}: {value!r} is not a number (decimal or 0x hex)") from None
    if not lo <= number <= hi:
        raise NetworkError(f"{name}: {number} is outside {lo}..{hi}")
    return number


def parse_ieee(text: Any, name: str = "ieee") -> t.EUI64:
    try:
        value = str(text).strip().replace("-", ":").lower()
        if ":" not in value and len(value) == 16:
            value = ":".join(value[i : i + 2] for i in range(0, 16, 2))
        eui = t.EUI64.convert(value)
    except (ValueError, TypeError, AssertionError):  # zigpy asserts the length
        eui = None
    if eui is None or len(str(text).replace(":", "").replace("-", "")) != 16:
        raise NetworkError(f"{name}: {text!r} is not an IEEE address (aa:bb:cc:dd:ee:ff:00:11)")
    return eui


@dataclass(frozen=True)
class FormRequest:
    channel: int | None = None
    pan_id: int | None = None
    extended_pan_id: t.ExtendedPanId | None = None
    force: bool = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FormRequest:
        epid_text = params.get("extended_pan_id")
        epid = None
        if epid_text not in (None, ""):
            try:
                epid = t.ExtendedPanId(t.EUI64.convert(str(epid_text).lower()))
            except (ValueError, TypeError, AssertionError):  # zigpy asserts the length
                raise NetworkError(
                    f"extended_pan_id: {epid_text!r} is not 8 bytes as aa:bb:cc:dd:ee:ff:00:11"
                ) from None
            if epid in (_EPID_ZERO, _EPID_ALL):
                raise NetworkError(f"extended_pan_id: {epid} is reserved")
        return cls(
            channel=_int_arg(params.get("channel"), "channel", 11, 26),
            pan_id=_int_arg(params.get("pan_id"), "pan_id", 0x0001, 0xFFFE),
            extended_pan_id=epid,
            force=str(params.get("force", "")).lower() in ("1", "true", "yes"),
        )


def network_summary(app: ControllerApplication) -> dict[str, Any]:
    """The network's identity (never the key)."""
    info = app.state.network_info
    return {
        "extended_pan_id": str(info.extended_pan_id),
        "pan_id": f"0x{int(info.pan_id):04X}",
        "channel": int(info.channel) if info.channel is not None else None,
        "coordinator_ieee": str(app.state.node_info.ieee),
        "devices": sum(1 for d in app.devices.values() if d.nwk != 0x0000),
    }


def network_formed(app: ControllerApplication) -> bool:
    info = app.state.network_info
    return info.extended_pan_id not in (None, t.ExtendedPanId.convert("00:00:00:00:00:00:00:00")) and bool(
        info.network_key.key != _REDACTED_KEY
    )


class NetworkManager:
    """Network operations on one connected application (see the module docstring)."""

    def __init__(
        self, app: ControllerApplication, data_dir: Path | None, *, backup_subdir: str | None = None
    ) -> None:
        self.app = app
        self.backup_subdir = backup_subdir
        self.data_dir = Path(data_dir) if data_dir is not None else None
        # True while form/restore rewrite the radio: a radio reset they cause is theirs, not a lost connection
        self.rewriting = False
        install_key_redaction()

    async def form(self, req: FormRequest) -> dict[str, Any]:
        """Form a new network; refuses to replace a formed one unless `force` (its devices would be lost)."""
        app = self.app
        if not req.force:
            try:
                await app.load_network_info(load_devices=False)
            except zigpy.exceptions.NetworkNotFormed:
                pass
            else:
                raise NetworkError(
                    f"a network is already formed (extended PAN id {app.state.network_info.extended_pan_id}); "
                    "back it up first, then pass --force to replace it",
                    conflict=True,
                )
        nwk = app.config[zconf.CONF_NWK]
        # zigpy's form_network takes its settings from the config and draws whatever is unset at random
        nwk[zconf.CONF_NWK_CHANNEL] = req.channel
        nwk[zconf.CONF_NWK_PAN_ID] = None if req.pan_id is None else t.PanId(req.pan_id)
        nwk[zconf.CONF_NWK_EXTENDED_PAN_ID] = req.extended_pan_id
        nwk[zconf.CONF_NWK_KEY] = None
        if req.channel is None and not nwk.get(zconf.CONF_NWK_CHANNELS):
            nwk[zconf.CONF_NWK_CHANNELS] = t.Channels.from_channel_list([11, 15, 20, 25])  # type: ignore[misc]
        self.rewriting = True
        try:
            await app.form_network()
            await self._restart_network()
        finally:
            self.rewriting = False
        LOGGER.info("zigbee network formed", extra={"fields": network_summary(app)})
        return network_summary(app)

    async def backup(self) -> NetworkBackup:
        try:
            return await self.app.backups.create_backup(load_devices=True)
        except zigpy.exceptions.NetworkNotFormed:
            raise NetworkError(
                "no network is formed on the radio: nothing to back up", conflict=True
            ) from None

    async def backup_json(self) -> dict[str, Any]:
        return (await self.backup()).as_open_coordinator_json()

    async def restore(self, backup: NetworkBackup) -> dict[str, Any]:
        """Write `backup`'s network (keys, PAN ids, channel, coordinator IEEE, children) to the radio and start it."""
        self.rewriting = True
        try:
            await self.app.backups.restore_backup(backup)
            await self._restart_network()
        finally:
            self.rewriting = False
        LOGGER.info("zigbee network restored from a backup", extra={"fields": network_summary(self.app)})
        return network_summary(self.app)

    async def _restart_network(self) -> None:
        app = self.app
        await app.load_network_info(load_devices=True)
        await app.start_network()
        app.backups.add_backup(app.backups.from_network_state())

    async def permit_join(self, seconds: Any) -> dict[str, Any]:
        secs = _int_arg(seconds, "seconds", 0, MAX_PERMIT_S)
        secs = 60 if secs is None else secs
        await self.app.permit(secs)
        LOGGER.info("zigbee permit join", extra={"fields": {"seconds": secs}})
        return {"permit_join_s": secs}

    def devices(self) -> list[dict[str, Any]]:
        out = []
        dev: Any
        for dev in sorted(self.app.devices.values(), key=lambda d: str(d.ieee)):
            if dev.nwk == 0x0000:
                continue  # the coordinator itself
            out.append(
                {
                    "ieee": str(dev.ieee),
                    "nwk": f"0x{int(dev.nwk):04X}",
                    "manufacturer": dev.manufacturer,
                    "model": dev.model,
                    "manufacturer_code": dev.manufacturer_id,
                    "endpoints": sorted(ep for ep in dev.endpoints if ep != 0),
                    "ota_client": any(
                        0x0019 in getattr(ep, "out_clusters", {}) for k, ep in dev.endpoints.items() if k != 0
                    ),
                    "last_seen": dev.last_seen,
                    "initialized": bool(dev.is_initialized),
                }
            )
        return out

    async def remove(self, ieee_text: Any) -> dict[str, Any]:
        ieee = parse_ieee(ieee_text)
        if ieee not in self.app.devices:
            raise NetworkError(f"no device {ieee} on this network", conflict=True)
        await self.app.remove(ieee)
        return {"removed": str(ieee)}

    # -------------------------------------------------------------------------------- automatic backups
    def backup_dir(self) -> Path:
        if self.data_dir is None:
            raise NetworkError("no data_dir: automatic backups need one")
        path = self.data_dir / BACKUP_DIR
        for folder in (path, path / self.backup_subdir) if self.backup_subdir else (path,):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        return path / self.backup_subdir if self.backup_subdir else path

    async def auto_backup(self, keep: int, now: float | None = None) -> Path:
        """Write one automatic backup into the data dir and delete the oldest beyond `keep`."""
        backup = await self.backup()
        folder = self.backup_dir()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
        path = folder / f"{AUTO_BACKUP_PREFIX}{stamp}.json"
        n = 1
        while path.exists():
            n += 1
            path = folder / f"{AUTO_BACKUP_PREFIX}{stamp}-{n}.json"
        write_backup_file(path, backup)
        for old in sorted(folder.glob(f"{AUTO_BACKUP_PREFIX}*.json"))[:-keep]:
            old.unlink(missing_ok=True)
        LOGGER.info("zigbee network backed up", extra={"fields": {"file": str(path)}})
        return path
