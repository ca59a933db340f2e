"""A simulated Silicon Labs EZSP NCP that bellows drives unmodified (ASH over TCP or a pty), with devices behind it.

Layers: `ash` (UART framing and link), `ezsp` (frame codec), `ncp` (NCP state and commands), `network` (the air
and the simulated devices on it), `server` (the thin asyncio I/O). See README.md for what is modelled.
"""
