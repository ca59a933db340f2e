"""Zigbee OTA Upgrade cluster (0x0019) server on zigpy, with bellows for EZSP radios."""
