"""Scoped-credential routes (admin only): create, list and revoke device and integration tokens.

The same operations as `otagw token create|list|revoke`, over the same store (gateway/api/credentials.py).
A new token's secret is in the create answer only; the gateway keeps its SHA-256.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.app import services
from gateway.api.credentials import SCOPES, Credential, CredentialError, CredentialStore
from gateway.api.errors import ApiError
from gateway.api.openapi import API_PREFIX, Model, Resp, RouteTable, err, parse_body, reply


class TokenCreate(Model):
    name: str = Field(min_length=1, max_length=64, description="unique name, e.g. the device or integration")
    scopes: list[str] = Field(min_length=1, description=f"any of: {', '.join(SCOPES)}")
    device: str | None = Field(None, description="bind to one device id (protocol:network:address:endpoint)")


class TokenOut(BaseModel):
    name: str
    scopes: list[str]
    device: str | None
    created_at: float


class TokenCreated(TokenOut):
    token: str = Field(description="the secret, shown once: present it as Authorization: Bearer <token>")


def _store(request: web.Request) -> CredentialStore:
    store = services(request).credentials
    assert store is not None  # create_app always sets one
    return store


def _out(cred: Credential) -> TokenOut:
    return TokenOut.model_validate(cred.public())


async def list_tokens(request: web.Request) -> web.Response:
    """Every scoped credential (names, scopes, bound device; never a secret or its hash)."""
    return reply([_out(c) for c in _store(request).entries()])


async def create_token(request: web.Request) -> web.Response:
    """Create a scoped credential; the answer carries its secret, which is not stored and cannot be shown again."""
    body = await parse_body(request, TokenCreate)
    try:
        cred, secret = _store(request).create(body.name, body.scopes, body.device)
    except CredentialError as exc:
        code = 409 if "exists" in str(exc) else 422
        raise ApiError(
            code, "invalid_credential" if code == 422 else "exists", str(exc), field="name"
        ) from None
    return reply(TokenCreated(token=secret, **cred.public()), status=201)


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a credential: its token is refused (401) from the next request on."""
    try:
        _store(request).revoke(request.match_info["name"])
    except CredentialError as exc:
        raise ApiError(404, "not_found", str(exc), field="name") from None
    return web.Response(status=204)


def declare(t: RouteTable) -> None:
    p = f"{API_PREFIX}/tokens"
    t.op(
        "GET",
        p,
        summary="List scoped tokens",
        tag="tokens",
        responses={200: Resp("credentials", TokenOut, many=True)},
    )(list_tokens)
    t.op(
        "POST",
        p,
        summary="Create a scoped token",
        tag="tokens",
        body=TokenCreate,
        responses={201: Resp("created; the secret is shown once", TokenCreated), 409: err("name taken")},
    )(create_token)
    t.op(
        "DELETE",
        p + "/{name}",
        summary="Revoke a scoped token",
        tag="tokens",
        responses={204: Resp("revoked"), 404: err("no such token")},
    )(revoke_token)
