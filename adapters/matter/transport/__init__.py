"""Matter message layer: message/protocol headers, status reports, sessions, MRP, exchanges, UDP."""
