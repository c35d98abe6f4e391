"""Run a command with every socket refused and recorded: `python -m tests.no_network LOG pytest ARGS...` or
`python -m tests.no_network LOG cli ARGS...` (recipe-checks' console command). Each attempt to resolve a
name or open a connection (other than a Unix socket) is appended to LOG with its stack, then fails as an
unplugged cable would: the command goes on, and the test reads LOG."""

from __future__ import annotations

import socket
import sys
import traceback

_connect = socket.socket.connect


def _refuse(what: str, target) -> None:
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(f"{what} {target!r}\n{''.join(traceback.format_stack(limit=30))}\n")
    raise OSError(f"tests.no_network: {what} {target!r} refused")


def _connect_local_only(self, address):
    if self.family == getattr(socket, "AF_UNIX", object()):
        return _connect(self, address)
    return _refuse("connect", address)


if __name__ == "__main__":
    LOG, kind, *args = sys.argv[1:]
    socket.socket.connect = _connect_local_only
    socket.socket.connect_ex = _connect_local_only
    socket.getaddrinfo = lambda host, *a, **k: _refuse("getaddrinfo", host)
    socket.gethostbyname = lambda host: _refuse("gethostbyname", host)
    socket.create_connection = lambda address, *a, **k: _refuse("create_connection", address)
    if kind == "pytest":
        import pytest

        sys.exit(pytest.main(args))
    from recipe_checks.cli import main

    sys.exit(main(args))
