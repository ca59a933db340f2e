"""Integrations: clients of the update core that bring otagw to other systems (Home Assistant over MQTT;
Zigbee2MQTT's device list for a controller otagw publishes to, z2m_bridge.py).

An integration uses only the core's public read API, its event stream, its rollout commands and (z2m_bridge) the
neutral `observe` of the adapter interface, like any other
client; the core never imports an integration.
"""
