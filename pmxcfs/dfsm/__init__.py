"""Generic DFSM (distributed finite state machine) over corosync CPG, sans-I/O.

codec: wire headers; machine: the state machine (`Dfsm.feed(event) -> actions`);
driver: trio adapter; sim: deterministic in-memory CPG; kvcodec: kvstore-group payloads;
capture: reader for recorded CPG traffic.
"""
