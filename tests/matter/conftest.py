"""Fixtures shared by the Matter tests: `netns_pair` (two network namespaces joined by a veth, see netns.py)."""

from __future__ import annotations

from .netns import netns_pair

__all__ = ["netns_pair"]
