"""Stand-ins for a node's own tools, on the PATH of the bootstrap script a
simulated node runs: ``pke``, ``kubectl``, ``systemctl`` and ``ip``.

Stand-ins because no VM, kubelet or systemd runs here. ``ip`` answers from the
node's addresses (``PKE_VSPHERE_SIM_ADDRESSES``, "NIC=ADDRESS/PREFIX ...", in the
order the guest lists its NICs); the others ask the simulated-nodes agent that
runs the script, over its control socket (``PKE_VSPHERE_SIM_CONTROL``), which
does what the real tool would do to the simulated world (start the leader's
stand-in API server, join a node with its token, apply an add-on, start
keepalived) and answers with the tool's exit code and output.

Run as ``python -S -E standin_tool.py TOOL ARGS...``: the standard library only,
so that each call costs a few milliseconds.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def ip(args: list[str]) -> int:
    """``ip -o -4 addr show``, the one form the bootstrap script uses."""
    if args[:4] != ["-o", "-4", "addr", "show"]:
        print(f"ip (stand-in): only 'ip -o -4 addr show' is simulated, not {args!r}", file=sys.stderr)
        return 2
    for index, entry in enumerate(os.environ.get("PKE_VSPHERE_SIM_ADDRESSES", "").split(), start=2):
        nic, _, address = entry.partition("=")
        line = f"{index}: {nic}    inet {address} scope global {nic}"
        print(line + "\\       valid_lft forever preferred_lft forever")
    return 0


def ask_agent(tool: str, args: list[str]) -> int:
    stdin = sys.stdin.read() if tool == "kubectl" and "-" in args else ""
    request = {"node": os.environ["PKE_VSPHERE_SIM_NODE"], "tool": tool, "args": args, "stdin": stdin}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
        control.connect(os.environ["PKE_VSPHERE_SIM_CONTROL"])
        control.sendall(json.dumps(request).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = control.recv(65536)
            if not chunk:
                break
            answer += chunk
    reply = json.loads(answer)
    # In the order the tool wrote them (a pipe buffers stdout, not stderr).
    sys.stdout.write(reply.get("stdout", ""))
    sys.stdout.flush()
    sys.stderr.write(reply.get("stderr", ""))
    return int(reply["exit"])


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    if tool == "ip":
        return ip(args)
    return ask_agent(tool, args)


if __name__ == "__main__":
    sys.exit(main())
