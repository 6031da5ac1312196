"""Multi-node corosync test clusters built from network/mount/UTS namespaces."""
