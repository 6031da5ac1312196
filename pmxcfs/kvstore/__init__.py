"""The `pve_kvstore_v1` status group (status-ipc §2-§5): node key-values, RRD data, node IPs,
online flags and the cluster log, shared with C and Python peers.

codec: the group's name, protocol version and payloads; app: the DFSM Application; machine:
the Dfsm that adds this group's owed sends; service: the trio side (CPG, set_status, log).
"""
