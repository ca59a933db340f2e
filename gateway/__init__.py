"""otagw: the protocol-neutral core of the multi-protocol OTA gateway."""

__version__ = "0.1.0"
