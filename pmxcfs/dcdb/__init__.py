"""DCDB: the configuration database synchronised by the `pve_dcdb_v1` DFSM.

codec: payload formats; app: the DFSM application over the Tree; backend: ClusterBackend.
"""
