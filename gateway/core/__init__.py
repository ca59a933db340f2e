"""The update core: device records and their state machine, policy, rollouts, and the neutral interface."""
