"""Fabric administration: the chip SDK controller wrapper and the provider node's operational identity."""
