"""Small mechanisms every part of the tree needs once: a clock, a backoff, a log-once note.

Imports nothing of ours, so drivers, the gateway and the hub can all use it.
"""
