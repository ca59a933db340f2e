"""Integrations with other home-automation systems over their own protocols (MQTT)."""
