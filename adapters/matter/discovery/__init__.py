"""Matter DNS-SD: operational advertising of the provider node."""
