"""Integrations: clients of the update core that bring otagw to other systems (Home Assistant over MQTT).

An integration uses only the core's public read API, its event stream and its rollout commands, like any other
client; the core never imports an integration.
"""
