"""The `podnet` command."""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_cni_server(args: argparse.Namespace) -> int:
    from podnet.cni.server import serve

    serve(args.socket)
    return 0


def _cmd_install_cni(args: argparse.Namespace) -> int:
    from podnet.install import install_cni

    for path in install_cni(args.bin_dir, args.conf_dir):
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from podnet.demo import run

    return run(keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    from podnet.install import DEFAULT_SOCKET

    parser = argparse.ArgumentParser(prog="podnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("cni-server", help="serve the CNI plugin's fast path on a unix socket")
    p.add_argument("--socket", default=DEFAULT_SOCKET)
    p.set_defaults(func=_cmd_cni_server)
    p = sub.add_parser("install-cni", help="install the plugin executables (and a conflist)")
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--conf-dir")
    p.set_defaults(func=_cmd_install_cni)
    p = sub.add_parser("demo", help="wire two pods on one node and show they connect")
    p.add_argument("--keep", action="store_true", help="leave the namespaces in place")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv and "CNI_COMMAND" in os.environ:
        # Exec'd by a runtime under this name: behave as the plugin.
        from podnet.cni.shim import main as plugin_main

        plugin_main("podnet")
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
