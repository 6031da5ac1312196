"""pmxcfs-py: the Proxmox cluster filesystem, rebuilt in Python."""

__version__ = "0.1.0"
