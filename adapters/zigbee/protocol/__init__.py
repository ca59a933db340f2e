"""The sans-I/O Zigbee OTA server: events in (events.py), decisions and actions out (server.py)."""
