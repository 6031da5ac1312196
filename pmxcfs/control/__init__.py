"""The daemon's local admin socket: what `pmxcfs-admin status|log|debug` ask a running node.

`protocol` frames and validates (no I/O), `snapshot` reads the daemon's objects into a plain
document, `history` turns 1 s samples into rates and sync times, `server` serves the socket
from the daemon's nursery and `client` is the blocking side the command line uses.
"""
