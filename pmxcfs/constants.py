"""Fixed facts of the reference daemon (spec filesystem.md §1)."""

from __future__ import annotations

DB_DIR = "/var/lib/pve-cluster"
DB_NAME = "config.db"
LOCKFILE_NAME = ".pmxcfs.lockfile"
RUN_DIR = "/run/pve-cluster"
RESTART_FLAG_NAME = "cfs-restart-flag"
PID_FILE = "/var/run/pve-cluster.pid"
MOUNT_POINT = "/etc/pve"
HOST_COROSYNC_CONF = "/etc/corosync/corosync.conf"
RRD_DIR = "/var/lib/rrdcached/db"  # the RRD files the PVE graphs read (status-ipc §4.3)
RRDCACHED_SOCKET = "/var/run/rrdcached.sock"

MAX_FILE_SIZE = 1024 * 1024
MAX_FS_SIZE = 128 * 1024 * 1024
MAX_INODES = 256 * 1024
BLOCK_SIZE = 4096
NAME_MAX = 256
LOCK_TIMEOUT = 120
LOCK_DIR = "priv/lock"
SQLITE_BUSY_TIMEOUT_MS = 10000
WWW_DATA_GROUP = "www-data"
UMASK = 0o027
MAX_WRITE = 128 * 1024

DT_DIR = 4
DT_REG = 8

VERSION_ROW_NAME = "__version__"
COROSYNC_CONF = "corosync.conf"

# Paths whose change counters appear in .version, in the reference's fixed order.
VERSIONED_PATHS: tuple[str, ...] = (
    "corosync.conf",
    "corosync.conf.new",
    "storage.cfg",
    "user.cfg",
    "domains.cfg",
    "notifications.cfg",
    "priv/notifications.cfg",
    "priv/shadow.cfg",
    "priv/acme/plugins.cfg",
    "priv/tfa.cfg",
    "priv/token.cfg",
    "priv/ipam.db",
    "priv/macs.db",
    "datacenter.cfg",
    "vzdump.cron",
    "vzdump.conf",
    "jobs.cfg",
    "ha/crm_commands",
    "ha/manager_status",
    "ha/resources.cfg",
    "ha/groups.cfg",
    "ha/fence.cfg",
    "status.cfg",
    "replication.cfg",
    "ceph.conf",
    "sdn/vnets.cfg",
    "sdn/zones.cfg",
    "sdn/controllers.cfg",
    "sdn/subnets.cfg",
    "sdn/ipams.cfg",
    "sdn/mac-cache.json",
    "sdn/pve-ipam-state.json",
    "sdn/dns.cfg",
    "sdn/fabrics/openfabric.cfg",
    "sdn/fabrics/ospf.cfg",
    "sdn/.running-config",
    "virtual-guest/cpu-models.conf",
    "virtual-guest/profiles.cfg",
    "firewall/cluster.fw",
    "mapping/directory.cfg",
    "mapping/pci.cfg",
    "mapping/usb.cfg",
)

#: seconds before a service reconnects after corosync went away (the reference's start job)
RESTART_DELAY = 5.0
#: seconds before rejoining a CPG group left for a resync (the reference waits RESTART_DELAY);
#: shorter keeps the group at full votes, which the write gate needs
REJOIN_DELAY = 0.2
