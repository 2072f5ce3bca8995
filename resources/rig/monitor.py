#!/usr/bin/env python3
"""Runs QEMU human-monitor commands on a running rig host, through the QMP socket that
resources/rig/run.sh gives it (its path is on run.sh's "booting the rig host" line), and prints
what they answer. For a run that seems hung: where the rig host's CPUs are and what its serial
port holds, without stopping it.

    python3 resources/rig/monitor.py /tmp/viaduct-rig.XXXXXX/qmp.sock "info registers -a"
    python3 resources/rig/monitor.py SOCK "info cpus" "info irq" "info pic"

With no command it runs "info status", "info cpus" and "info registers -a"."""
import json
import socket
import sys


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(sys.argv) >= 2 else 2
    commands = sys.argv[2:] or ["info status", "info cpus", "info registers -a"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(sys.argv[1])
    except OSError as e:
        print(f"monitor.py: cannot connect to {sys.argv[1]}: {e} (is the rig still running?)",
              file=sys.stderr)
        return 1
    reader = sock.makefile("r")

    def answer():
        while True:
            line = reader.readline()
            if not line:
                raise SystemExit("monitor.py: QEMU closed the socket")
            reply = json.loads(line)
            if "event" not in reply:
                return reply

    reader.readline()  # the greeting
    sock.sendall(b'{"execute": "qmp_capabilities"}\n')
    answer()
    for command in commands:
        request = {"execute": "human-monitor-command", "arguments": {"command-line": command}}
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply = answer()
        print(f"== {command}")
        print(reply.get("return", reply.get("error")), end="")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
