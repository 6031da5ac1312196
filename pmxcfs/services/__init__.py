"""The long-running jobs of a cluster node, one per module, each a trio task started with
``nursery.start``: replication (DCDB and its commit policy), the quorum watcher, the
corosync.conf mirror and the timer. The status group is pmxcfs.kvstore.service."""
