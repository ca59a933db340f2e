"""Protocol adapters: each maps the neutral update core onto one ecosystem (Matter, Zigbee)."""
