"""Matter OTA Provider node written in Python (cluster 0x0029 over CASE + BDX)."""
