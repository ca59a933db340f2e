"""Publishing otagw's approved catalog to controllers that own their radios (Zigbee2MQTT, ZHA, python-matter-server).

staging.py decides which images each controller sees, digests.py computes the checksums each client checks,
documents.py renders the three index formats, routes.py serves them and the images behind a catalog-read token,
and service.py ties them together with per-image download metrics.
"""
