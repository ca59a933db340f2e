"""Per-gateway database roles with least privilege: row-level security by site, no catalog or budget writes.

`install_row_security` (run by the fleet's admin role, which owns the tables and so is not subject to the
policies) enables row-level security and grants a group role `otagw_gateway` exactly what a gateway needs;
`provision_gateway` creates one LOGIN role per gateway, a member of that group, mapped in `fleet_roles` to its
gateway id and site. What a gateway's role can and cannot do:

- devices: only rows of its own site, read or written; a row it writes must name its site and itself as owner
  (so a compromised home gateway cannot read the neighbours' devices, nor take over their records);
- history: only entries of devices it can see;
- rollouts: read; update only the progress columns the rollout engine moves (status, wave, clocks) - never the
  image, selector or waves, and no new rollouts (those are operator actions, made with the admin role);
- rollout events: read and append;
- fleet_budgets, fleet_roles, schema versions, the shared blobs: read only; fleet_gateways and fleet_slots: rows of others are
  readable (budgets are counted fleet-wide) but only its own are written (expired rows of dead gateways may be
  reaped); fleet_leases: any gateway may campaign for leadership.

The site of the connected role comes from `fleet_roles` keyed by `session_user` (the login role), through
SECURITY DEFINER functions the gateway cannot redefine.

Known gap (next step): a compromised gateway can still insert a slot row without taking the advisory lock and
so overfill a budget; moving acquisition into a SECURITY DEFINER function closes it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

__all__ = ["GATEWAY_GROUP", "install_row_security", "provision_gateway", "role_name"]

GATEWAY_GROUP = "otagw_gateway"

_PROGRESS_COLUMNS = "status, status_reason, current_wave, wave_opened_at, wave_completed_at, updated_at"

_STATEMENTS = [
    f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{GATEWAY_GROUP}') THEN
            CREATE ROLE {GATEWAY_GROUP} NOLOGIN;
        END IF;
    END $$""",
    """CREATE OR REPLACE FUNCTION otagw_my_site() RETURNS TEXT LANGUAGE sql STABLE SECURITY DEFINER
       SET search_path = public AS $$ SELECT site FROM fleet_roles WHERE role_name = session_user $$""",
    """CREATE OR REPLACE FUNCTION otagw_my_gateway() RETURNS TEXT LANGUAGE sql STABLE SECURITY DEFINER
       SET search_path = public AS $$ SELECT gateway_id FROM fleet_roles WHERE role_name = session_user $$""",
    "REVOKE ALL ON FUNCTION otagw_my_site(), otagw_my_gateway() FROM PUBLIC",
    f"GRANT EXECUTE ON FUNCTION otagw_my_site(), otagw_my_gateway() TO {GATEWAY_GROUP}",
    # devices: own site only, and writes must name this gateway as owner
    "ALTER TABLE devices ENABLE ROW LEVEL SECURITY",
    "DROP POLICY IF EXISTS gateway_site ON devices",
    f"""CREATE POLICY gateway_site ON devices TO {GATEWAY_GROUP}
        USING (site = otagw_my_site())
        WITH CHECK (site = otagw_my_site() AND gateway_id = otagw_my_gateway())""",
    f"GRANT SELECT, INSERT, UPDATE, DELETE ON devices TO {GATEWAY_GROUP}",
    # history: entries of visible devices (the subquery is itself filtered by the devices policy)
    "ALTER TABLE history ENABLE ROW LEVEL SECURITY",
    "DROP POLICY IF EXISTS gateway_site ON history",
    f"""CREATE POLICY gateway_site ON history TO {GATEWAY_GROUP}
        USING (EXISTS (SELECT 1 FROM devices d WHERE d.device_id = history.device_id))
        WITH CHECK (EXISTS (SELECT 1 FROM devices d WHERE d.device_id = history.device_id))""",
    f"GRANT SELECT, INSERT, DELETE ON history TO {GATEWAY_GROUP}",
    # rollouts: read, move progress only; events: read and append
    f"GRANT SELECT ON rollouts, rollout_events, otagw_schema, otagw_fleet_schema TO {GATEWAY_GROUP}",
    f"GRANT UPDATE ({_PROGRESS_COLUMNS}) ON rollouts TO {GATEWAY_GROUP}",
    f"GRANT INSERT ON rollout_events TO {GATEWAY_GROUP}",
    # fleet tables
    f"GRANT SELECT ON fleet_budgets, fleet_roles, fleet_blobs, fleet_blob_chunks TO {GATEWAY_GROUP}",
    "ALTER TABLE fleet_gateways ENABLE ROW LEVEL SECURITY",
    "DROP POLICY IF EXISTS gateway_read ON fleet_gateways",
    "DROP POLICY IF EXISTS gateway_own ON fleet_gateways",
    "DROP POLICY IF EXISTS gateway_own_update ON fleet_gateways",
    f"CREATE POLICY gateway_read ON fleet_gateways FOR SELECT TO {GATEWAY_GROUP} USING (true)",
    f"""CREATE POLICY gateway_own ON fleet_gateways FOR INSERT TO {GATEWAY_GROUP}
        WITH CHECK (gateway_id = otagw_my_gateway() AND site = otagw_my_site())""",
    f"""CREATE POLICY gateway_own_update ON fleet_gateways FOR UPDATE TO {GATEWAY_GROUP}
        USING (gateway_id = otagw_my_gateway())
        WITH CHECK (gateway_id = otagw_my_gateway() AND site = otagw_my_site())""",
    f"GRANT SELECT, INSERT, UPDATE ON fleet_gateways TO {GATEWAY_GROUP}",
    "ALTER TABLE fleet_slots ENABLE ROW LEVEL SECURITY",
    "DROP POLICY IF EXISTS slots_read ON fleet_slots",
    "DROP POLICY IF EXISTS slots_insert ON fleet_slots",
    "DROP POLICY IF EXISTS slots_update ON fleet_slots",
    "DROP POLICY IF EXISTS slots_delete ON fleet_slots",
    f"CREATE POLICY slots_read ON fleet_slots FOR SELECT TO {GATEWAY_GROUP} USING (true)",
    f"""CREATE POLICY slots_insert ON fleet_slots FOR INSERT TO {GATEWAY_GROUP}
        WITH CHECK (gateway_id = otagw_my_gateway() AND site = otagw_my_site())""",
    # a stale row (its gateway's lease expired) may be taken over; a live gateway's row may not
    f"""CREATE POLICY slots_update ON fleet_slots FOR UPDATE TO {GATEWAY_GROUP}
        USING (gateway_id = otagw_my_gateway() OR NOT EXISTS (SELECT 1 FROM fleet_gateways g
               WHERE g.gateway_id = fleet_slots.gateway_id AND g.lease_until > clock_timestamp()))
        WITH CHECK (gateway_id = otagw_my_gateway() AND site = otagw_my_site())""",
    f"""CREATE POLICY slots_delete ON fleet_slots FOR DELETE TO {GATEWAY_GROUP}
        USING (gateway_id = otagw_my_gateway() OR NOT EXISTS (SELECT 1 FROM fleet_gateways g
               WHERE g.gateway_id = fleet_slots.gateway_id AND g.lease_until > clock_timestamp()))""",
    f"GRANT SELECT, INSERT, UPDATE, DELETE ON fleet_slots TO {GATEWAY_GROUP}",
    f"GRANT SELECT, INSERT, UPDATE ON fleet_leases TO {GATEWAY_GROUP}",
]


def role_name(gateway_id: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", gateway_id):
        raise ValueError(f"gateway id {gateway_id!r}: expected lower-case letters, digits, '_', '.', '-'")
    return f"otagw_gw_{gateway_id}"


async def install_row_security(conn: asyncpg.Connection) -> None:
    """Enable the policies and grants (idempotent; run with the admin role after both schemas migrated)."""
    async with conn.transaction():
        for stmt in _STATEMENTS:
            await conn.execute(stmt)


async def provision_gateway(conn: asyncpg.Connection, gateway_id: str, site: str, password: str) -> str:
    """Create (or reset the password of) the login role of one gateway; returns the role name."""
    name = role_name(gateway_id)
    async with conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
        verb = "ALTER" if exists else "CREATE"
        # DDL takes no bind parameters: format() quotes the identifier and the literal
        stmt = await conn.fetchval(
            f"SELECT format('{verb} ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", name, password
        )
        await conn.execute(stmt)
        await conn.execute(f'GRANT {GATEWAY_GROUP} TO "{name}"')
        await conn.execute(
            "INSERT INTO fleet_roles (role_name, gateway_id, site) VALUES ($1, $2, $3) "
            "ON CONFLICT (role_name) DO UPDATE SET gateway_id = EXCLUDED.gateway_id, site = EXCLUDED.site",
            name,
            gateway_id,
            site,
        )
    return name
