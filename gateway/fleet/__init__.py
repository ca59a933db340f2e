"""Fleet coordination on PostgreSQL: gateway membership and leases, shared transfer budgets, leader election."""
