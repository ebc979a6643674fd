"""Scaling-law toolkit: published laws as data, compute accounting and `plm plan`."""
