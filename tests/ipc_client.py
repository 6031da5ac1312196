"""A libqb `pve2` client run inside a daemon's network namespace (see tests/ipc_harness.py).

stdin: {"uid": U, "gid": G, "requests": ["<hex of a raw request, header included>", ...]}
stdout: {"connect_errno": null | E, "replies": [[id, error, "<payload hex>"] | ["oserror", E]],
         "pid": <our pid>}
Credentials are dropped (real and effective ids) before connecting: the server sees them
through SCM_CREDENTIALS.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    from cpg.ipcs import IpcClient  # before dropping privileges: the venv may be root-only

    job = json.load(sys.stdin)
    uid, gid = job.get("uid", 0), job.get("gid", 0)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)

    out: dict[str, object] = {"connect_errno": None, "replies": [], "pid": os.getpid()}
    try:
        client = IpcClient(job.get("name", "pve2"))
    except OSError as exc:
        out["connect_errno"] = exc.errno
        json.dump(out, sys.stdout)
        return 0
    replies: list[object] = []
    with client:
        for raw in job["requests"]:
            try:
                req_id, error, data = client.request_raw(bytes.fromhex(raw))
                replies.append([req_id, error, data.hex()])
            except OSError as exc:
                replies.append(["oserror", exc.errno])
    out["replies"] = replies
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
