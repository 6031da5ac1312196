"""The VM list: VMID -> (node, type, version), derived from the tree (spec §6)."""

from __future__ import annotations

from dataclasses import dataclass

from .paths import VmConfig


@dataclass(slots=True)
class VmInfo:
    node: str
    vmtype: str
    version: int


class VmListError(Exception):
    """The tree cannot give a VM list; the reference refuses such a database."""


class DuplicateVmid(VmListError):
    def __init__(self, vmid: int) -> None:
        super().__init__(f"detected duplicate VMID {vmid}")
        self.vmid = vmid


class VmList:
    """Registry with the reference's two counters (list version and per-VM version)."""

    __slots__ = ("_vm_counter", "ids", "version")

    def __init__(self) -> None:
        self.ids: dict[int, VmInfo] = {}
        self.version = 0
        self._vm_counter = 0

    def conflicts(self, cfg: VmConfig) -> bool:
        """True when the VMID is held by another node or type (the EEXIST rule)."""
        cur = self.ids.get(cfg.vmid)
        return cur is not None and (cur.node != cfg.node or cur.vmtype != cfg.vmtype)

    def register(self, cfg: VmConfig) -> None:
        self._vm_counter += 1
        self.ids[cfg.vmid] = VmInfo(cfg.node, cfg.vmtype, self._vm_counter)
        self.version += 1

    def remove(self, vmid: int) -> None:
        if self.ids.pop(vmid, None) is not None:
            self.version += 1

    def rebuild(self, configs: list[VmConfig], bump: bool) -> None:
        """Replace the list; raises DuplicateVmid and leaves the old list in place."""
        fresh: dict[int, VmInfo] = {}
        counter = self._vm_counter
        for cfg in configs:
            if cfg.vmid in fresh:
                raise DuplicateVmid(cfg.vmid)
            counter += 1
            fresh[cfg.vmid] = VmInfo(cfg.node, cfg.vmtype, counter)
        self.ids = fresh
        self._vm_counter = counter
        if bump:
            self.version += 1
