"""Matter security: crypto primitives, operational certificates, node credentials and the CASE handshake."""
