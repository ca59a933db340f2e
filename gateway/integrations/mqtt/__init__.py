"""Home Assistant over MQTT discovery.

`discovery` (topic layout and HA payloads), `view` (device records -> what HA shows), `bridge` (the sans-I/O
publisher: desired retained state, rate limiting, removal, reconnect) and `install` (HA's install button -> a
single-device rollout through policy) have no I/O; `client` is the thin asyncio layer on aiomqtt.
"""
