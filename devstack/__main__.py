"""python -m devstack up [NAME...] | down [NAME...] | status | start NAME | stop NAME
| fetch | deploy | redeploy | endpoints"""

from __future__ import annotations

import argparse
import sys
import time

from devstack import stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd, help_ in (("up", "start servers (default: all) and wait"), ("down", "stop")):
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("names", nargs="*", metavar="NAME", help=", ".join(stack.NAMES))
    for cmd in ("start", "stop"):
        sub.add_parser(cmd, help=f"{cmd} one server").add_argument("name", choices=stack.NAMES)
    sub.add_parser("status", help="up/down, address and pid of each server")
    sub.add_parser("endpoints", help="print every endpoint")
    sub.add_parser("fetch", help="download the Kafka jars (Maven)")
    sub.add_parser("deploy", help="serve deploy serve_config.yaml and wait for RUNNING")
    sub.add_parser("redeploy", help="delete the Serve applications, then deploy (new code)")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    try:
        if args.cmd == "up":
            stack.up(args.names or None)
            print(f"stack up in {time.monotonic() - t0:.1f} s")
        elif args.cmd == "down":
            stack.down(args.names or None)
        elif args.cmd == "start":
            stack.start(args.name)
        elif args.cmd == "stop":
            stack.stop(args.name)
        elif args.cmd == "status":
            print("\n".join(stack.status()))
        elif args.cmd == "endpoints":
            print("\n".join(stack.endpoints()))
        elif args.cmd == "fetch":
            stack.fetch()
        elif args.cmd in ("deploy", "redeploy"):
            ray = stack.get("ray")
            if not ray.is_running():
                raise stack.StackError("ray is not running: `python -m devstack up ray`")
            getattr(ray, args.cmd)()
    except stack.StackError as exc:
        print(f"devstack {args.cmd}: FAILED\n{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
