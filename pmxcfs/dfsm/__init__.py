"""Generic DFSM (distributed finite state machine) over corosync CPG, sans-I/O; it names no
application (each brings its own group, protocol version and payloads).

codec: wire headers; machine: `Dfsm.feed(event) -> actions`; driver: trio adapter; runner:
one machine in one CPG group; sim: in-memory CPG; capture: recorded CPG traffic.
"""
