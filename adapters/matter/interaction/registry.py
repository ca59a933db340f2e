"""The node's data model: endpoints, the cluster servers on them, and the path checks of invoke and read.

A `ClusterServer` declares its attributes (id -> getter) and commands (id -> privilege, handler, response id);
the global attributes (ClusterRevision, FeatureMap, AttributeList, AcceptedCommandList, GeneratedCommandList) are
derived from those declarations. `Registry.invoke` / `Registry.read` resolve one path against the endpoints,
check the ACL, run the handler or getter, and produce the IM answer item with the right status:

  invoke   UNSUPPORTED_ENDPOINT -> UNSUPPORTED_CLUSTER -> UNSUPPORTED_COMMAND -> UNSUPPORTED_ACCESS (ACL) ->
           NEEDS_TIMED_INTERACTION -> INVALID_COMMAND / CONSTRAINT_ERROR (the handler's field validation) ->
           the handler's response or status
  read     concrete: UNSUPPORTED_ENDPOINT -> UNSUPPORTED_CLUSTER -> UNSUPPORTED_ACCESS (View on the cluster) ->
           UNSUPPORTED_ATTRIBUTE -> UNSUPPORTED_ACCESS (the attribute's own privilege) -> data
           wildcard: expands to existing paths and silently drops denied ones

Handlers are `handler(ctx: InvokeContext, fields: Struct)` returning (response command id, Struct), a status
code, or None (= SUCCESS), directly or as an awaitable (QueryImage consults the core). Field validation failures
raise `FieldError` (INVALID_COMMAND) or `ConstraintError` (CONSTRAINT_ERROR); any `StatusError` becomes a status.
"""

from __future__ import annotations

import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from adapters.matter.interaction.acl import AccessControl, Privilege, SubjectDescriptor
from adapters.matter.interaction.messages import (
    AttributeData,
    AttributePath,
    AttributeReport,
    AttributeStatus,
    CommandData,
    CommandPath,
    CommandStatus,
    DataVersionFilter,
    Status,
    StatusIB,
)
from gateway.formats.tlv import Array, Struct, UInt

__all__ = [
    "ATTR_ACCEPTED_COMMAND_LIST",
    "ATTR_ATTRIBUTE_LIST",
    "ATTR_CLUSTER_REVISION",
    "ATTR_FEATURE_MAP",
    "ATTR_GENERATED_COMMAND_LIST",
    "Attribute",
    "ClusterServer",
    "Command",
    "CommandResult",
    "ConstraintError",
    "Endpoint",
    "FieldError",
    "InvokeContext",
    "ReadContext",
    "Registry",
    "StatusError",
]

log = logging.getLogger(__name__)

ATTR_GENERATED_COMMAND_LIST = 0xFFF8
ATTR_ACCEPTED_COMMAND_LIST = 0xFFF9
ATTR_ATTRIBUTE_LIST = 0xFFFB
ATTR_FEATURE_MAP = 0xFFFC
ATTR_CLUSTER_REVISION = 0xFFFD
_GLOBALS = (
    ATTR_GENERATED_COMMAND_LIST,
    ATTR_ACCEPTED_COMMAND_LIST,
    ATTR_ATTRIBUTE_LIST,
    ATTR_FEATURE_MAP,
    ATTR_CLUSTER_REVISION,
)


class StatusError(Exception):
    """Raised by a handler or getter to answer with an IM status (and optional cluster-specific status)."""

    status: Status = Status.FAILURE

    def __init__(
        self, message: str = "", status: int | None = None, cluster_status: int | None = None
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        if status is not None:
            self.status = Status(status)
        self.cluster_status = cluster_status


class FieldError(StatusError):
    """A command field is missing or has the wrong type: INVALID_COMMAND."""

    status = Status.INVALID_COMMAND


class ConstraintError(StatusError):
    """A command field is out of its allowed range: CONSTRAINT_ERROR."""

    status = Status.CONSTRAINT_ERROR


@dataclass(frozen=True)
class InvokeContext:
    subject: SubjectDescriptor
    path: CommandPath
    timed: bool
    session: Any = None  # the exchange's SessionContext, for handlers that need peer details


@dataclass(frozen=True)
class ReadContext:
    subject: SubjectDescriptor | None
    fabric_filtered: bool = True
    session: Any = None


CommandResult = tuple[int, Struct] | int | None
Handler = Callable[[InvokeContext, Struct], CommandResult | Awaitable[CommandResult]]


@dataclass
class Command:
    id: int
    handler: Handler
    privilege: Privilege = Privilege.OPERATE
    response_id: int | None = None  # the generated command answering this one (None: status only)
    timed: bool = False


@dataclass
class Attribute:
    id: int
    getter: Callable[[ReadContext], Any]
    privilege: Privilege = Privilege.VIEW


class ClusterServer:
    """One cluster instance: declared attributes and commands, data version, derived global attributes."""

    def __init__(
        self,
        cluster_id: int,
        revision: int,
        *,
        feature_map: int = 0,
        attributes: Iterable[Attribute] = (),
        commands: Iterable[Command] = (),
        data_version: int | None = None,
    ) -> None:
        self.cluster_id = cluster_id
        self.revision = revision
        self.feature_map = feature_map
        self.attributes: dict[int, Attribute] = {a.id: a for a in attributes}
        self.commands: dict[int, Command] = {c.id: c for c in commands}
        self.data_version = secrets.randbits(32) if data_version is None else data_version

    def add_attribute(self, attr: Attribute) -> None:
        self.attributes[attr.id] = attr
        self.bump_version()

    def set_command_handler(self, command_id: int, handler: Handler) -> None:
        """Swap a command's handler (e.g. the real QueryImage replacing the provisional one)."""
        self.commands[command_id].handler = handler

    def bump_version(self) -> None:
        """Call whenever an attribute value changes (DataVersion, spec 7.10.3)."""
        self.data_version = (self.data_version + 1) & 0xFFFFFFFF

    def accepted_commands(self) -> list[int]:
        return sorted(self.commands)

    def generated_commands(self) -> list[int]:
        return sorted({c.response_id for c in self.commands.values() if c.response_id is not None})

    def attribute_ids(self) -> list[int]:
        return sorted(set(self.attributes) | set(_GLOBALS))

    def attribute_privilege(self, attr_id: int) -> Privilege | None:
        if attr_id in self.attributes:
            return self.attributes[attr_id].privilege
        return Privilege.VIEW if attr_id in _GLOBALS else None

    def read(self, attr_id: int, ctx: ReadContext) -> Any:
        """The TLV value of an attribute (globals derived); KeyError when the cluster has no such attribute."""
        if attr_id in self.attributes:
            return self.attributes[attr_id].getter(ctx)
        if attr_id == ATTR_CLUSTER_REVISION:
            return UInt(self.revision)
        if attr_id == ATTR_FEATURE_MAP:
            return UInt(self.feature_map)
        if attr_id == ATTR_ATTRIBUTE_LIST:
            return Array(UInt(a) for a in self.attribute_ids())
        if attr_id == ATTR_ACCEPTED_COMMAND_LIST:
            return Array(UInt(c) for c in self.accepted_commands())
        if attr_id == ATTR_GENERATED_COMMAND_LIST:
            return Array(UInt(c) for c in self.generated_commands())
        raise KeyError(attr_id)


@dataclass
class Endpoint:
    id: int
    device_types: list[tuple[int, int]] = field(default_factory=list)  # (device type id, revision)
    clusters: dict[int, ClusterServer] = field(default_factory=dict)
    client_clusters: list[int] = field(default_factory=list)


def _status_item(
    path: CommandPath, status: int, cluster_status: int | None = None, ref: int | None = None
) -> CommandStatus:
    return CommandStatus(path, StatusIB(int(status), cluster_status), ref)


class Registry:
    """Endpoints and their cluster servers, plus the ACL every invoke and read is checked against."""

    def __init__(self, acl: AccessControl | None = None) -> None:
        self.endpoints: dict[int, Endpoint] = {}
        self.acl = acl or AccessControl()
        self.acl.device_types = self.device_types

    def add_endpoint(
        self,
        endpoint_id: int,
        device_types: Iterable[tuple[int, int]] = (),
        client_clusters: Iterable[int] = (),
    ) -> Endpoint:
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            ep = self.endpoints[endpoint_id] = Endpoint(endpoint_id)
        ep.device_types += list(device_types)
        ep.client_clusters += list(client_clusters)
        return ep

    def add_cluster(self, endpoint_id: int, server: ClusterServer) -> ClusterServer:
        ep = self.endpoints.get(endpoint_id) or self.add_endpoint(endpoint_id)
        if server.cluster_id in ep.clusters:
            raise ValueError(f"cluster 0x{server.cluster_id:04x} already on endpoint {endpoint_id}")
        ep.clusters[server.cluster_id] = server
        return server

    def cluster(self, endpoint_id: int, cluster_id: int) -> ClusterServer | None:
        ep = self.endpoints.get(endpoint_id)
        return None if ep is None else ep.clusters.get(cluster_id)

    def device_types(self, endpoint_id: int) -> list[int]:
        ep = self.endpoints.get(endpoint_id)
        return [] if ep is None else [d for d, _ in ep.device_types]

    # ------------------------------------------------------------------ invoke

    async def invoke(
        self,
        subject: SubjectDescriptor | None,
        request: CommandData,
        *,
        timed: bool = False,
        session: Any = None,
    ) -> CommandData | CommandStatus | None:
        """Run one concrete command; return its response item (None only for an intentionally silent command)."""
        path, ref = request.path, request.ref
        if path.endpoint is None:
            return _status_item(path, Status.INVALID_ACTION, ref=ref)
        ep = self.endpoints.get(path.endpoint)
        if ep is None:
            return _status_item(path, Status.UNSUPPORTED_ENDPOINT, ref=ref)
        server = ep.clusters.get(path.cluster)
        if server is None:
            return _status_item(path, Status.UNSUPPORTED_CLUSTER, ref=ref)
        cmd = server.commands.get(path.command)
        if cmd is None:
            return _status_item(path, Status.UNSUPPORTED_COMMAND, ref=ref)
        if subject is None or not self.acl.check(subject, path.endpoint, path.cluster, cmd.privilege):
            return _status_item(path, Status.UNSUPPORTED_ACCESS, ref=ref)
        if cmd.timed and not timed:
            return _status_item(path, Status.NEEDS_TIMED_INTERACTION, ref=ref)
        fields = request.fields if request.fields is not None else Struct()
        ctx = InvokeContext(subject, path, timed, session)
        try:
            result = cmd.handler(ctx, fields)
            if inspect.isawaitable(result):
                result = await result
        except StatusError as exc:
            return _status_item(path, exc.status, exc.cluster_status, ref)
        except Exception:  # a handler bug answers FAILURE for this command instead of killing the exchange
            log.exception("handler for command 0x%x on cluster 0x%04x failed", path.command, path.cluster)
            return _status_item(path, Status.FAILURE, ref=ref)
        if result is None:
            return _status_item(path, Status.SUCCESS, ref=ref)
        if isinstance(result, tuple):
            resp_id, resp_fields = result
            return CommandData(CommandPath(path.endpoint, path.cluster, resp_id), resp_fields, ref)
        return _status_item(path, int(result), ref=ref)

    # ------------------------------------------------------------------ read

    def expand(self, path: AttributePath) -> Iterator[tuple[int, ClusterServer, int]]:
        """Existing (endpoint, cluster, attribute) triples a wildcard path covers, in order."""
        eps = [path.endpoint] if path.endpoint is not None else sorted(self.endpoints)
        for e in eps:
            ep = self.endpoints.get(e)
            if ep is None:
                continue
            cls = [path.cluster] if path.cluster is not None else sorted(ep.clusters)
            for c in cls:
                server = ep.clusters.get(c)
                if server is None:
                    continue
                attrs = [path.attribute] if path.attribute is not None else server.attribute_ids()
                for a in attrs:
                    if server.attribute_privilege(a) is not None:
                        yield e, server, a

    def read(
        self, ctx: ReadContext, path: AttributePath, filters: Iterable[DataVersionFilter] = ()
    ) -> list[AttributeReport]:
        """AttributeReports for one requested path (concrete: data or a status; wildcard: data only)."""
        versions = {(f.path.endpoint, f.path.cluster): f.data_version for f in filters}
        out: list[AttributeReport] = []
        if not path.is_wildcard:
            assert path.endpoint is not None and path.cluster is not None and path.attribute is not None
            concrete = AttributePath(path.endpoint, path.cluster, path.attribute)
            ep = self.endpoints.get(path.endpoint)
            if ep is None:
                return [AttributeStatus(concrete, StatusIB(Status.UNSUPPORTED_ENDPOINT))]
            server = ep.clusters.get(path.cluster)
            if server is None:
                return [AttributeStatus(concrete, StatusIB(Status.UNSUPPORTED_CLUSTER))]
            if not self.acl.check(ctx.subject, path.endpoint, path.cluster, Privilege.VIEW):
                return [AttributeStatus(concrete, StatusIB(Status.UNSUPPORTED_ACCESS))]
            priv = server.attribute_privilege(path.attribute)
            if priv is None:
                return [AttributeStatus(concrete, StatusIB(Status.UNSUPPORTED_ATTRIBUTE))]
            if not self.acl.check(ctx.subject, path.endpoint, path.cluster, priv):
                return [AttributeStatus(concrete, StatusIB(Status.UNSUPPORTED_ACCESS))]
            if versions.get((path.endpoint, path.cluster)) == server.data_version:
                return []  # the client already holds this version
            return [self._read_one(ctx, path.endpoint, server, path.attribute, concrete)]
        for e, server, a in self.expand(path):
            priv = server.attribute_privilege(a)
            assert priv is not None
            if not self.acl.check(ctx.subject, e, server.cluster_id, priv):
                continue
            if versions.get((e, server.cluster_id)) == server.data_version:
                continue
            out.append(self._read_one(ctx, e, server, a, AttributePath(e, server.cluster_id, a)))
        return out

    def _read_one(
        self, ctx: ReadContext, endpoint: int, server: ClusterServer, attr: int, path: AttributePath
    ) -> AttributeReport:
        try:
            value = server.read(attr, ctx)
        except StatusError as exc:
            return AttributeStatus(path, StatusIB(exc.status, exc.cluster_status))
        except Exception:
            log.exception(
                "getter for attribute 0x%x of cluster 0x%04x on endpoint %d failed",
                attr,
                server.cluster_id,
                endpoint,
            )
            return AttributeStatus(path, StatusIB(Status.FAILURE))
        return AttributeData(path, value, server.data_version)

    def write_status(self, subject: SubjectDescriptor | None, path: AttributePath) -> Status:
        """The status a write to `path` gets: this node's attributes are all read-only."""
        if path.is_wildcard:
            return Status.UNSUPPORTED_WRITE
        assert path.endpoint is not None and path.cluster is not None and path.attribute is not None
        ep = self.endpoints.get(path.endpoint)
        if ep is None:
            return Status.UNSUPPORTED_ENDPOINT
        server = ep.clusters.get(path.cluster)
        if server is None:
            return Status.UNSUPPORTED_CLUSTER
        if not self.acl.check(subject, path.endpoint, path.cluster, Privilege.VIEW):
            return Status.UNSUPPORTED_ACCESS
        if server.attribute_privilege(path.attribute) is None:
            return Status.UNSUPPORTED_ATTRIBUTE
        if not self.acl.check(subject, path.endpoint, path.cluster, Privilege.OPERATE):
            return Status.UNSUPPORTED_ACCESS
        return Status.UNSUPPORTED_WRITE
