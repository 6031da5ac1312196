"""The `pve2` IPC server PVE tools talk to (PVE::IPCC): sans-I/O operations and the libqb glue."""
