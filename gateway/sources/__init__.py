"""Upstream firmware sources (issue 12): find, verify and import firmware from the indexes users already trust.

One module per source type (`zigbee`: zigpy's providers - Zigbee2MQTT, zigpy, zigpy-ota, IKEA, Ledvance, Sonoff...;
`dcl`: the CSA DCL for Matter; `paa`: PAA certificates from the DCL), `http` (conditional GETs, limits, mirrors),
`verify` (downloads against their index entry) and `manager` (schedule, matching against the fleet, import).
"""
