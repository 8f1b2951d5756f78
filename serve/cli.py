"""`safe-serve`: answer questions over HTTP with a trained SAFE bridge (and optionally a Stage B policy choosing k).

Runs the app of serve.app under uvicorn on one socket bound here (`--port 0` picks a free port; the startup line
logs the URL). On SIGTERM or SIGINT uvicorn stops accepting connections, answers the requests in flight and
queued, the batcher drains, and the process exits 0. Bad arguments or a bridge/policy that cannot load: exit 2
with one line naming the problem.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import torch
import uvicorn

from serve.app import ANSWER_PATH, ServeSettings, create_app
from shared.cli import ArgumentParser, InputError, check_number, console
from shared.logs import setup_logging
from stage_a.config import DTYPES
from stage_a.pipeline import SafePipeline
from stage_b.actor import ACTOR_FILE
from stage_b.chooser import PolicyChooser

log = logging.getLogger("serve")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), with TCP_NODELAY, which accepted connections inherit:
    without it, uvicorn's two writes of a response (head, then body) meet the client's delayed ACK and every
    keep-alive request waits about 40 ms."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise InputError(f"--host {host} --port {port}: cannot listen there ({reason}); expected a free local address") \
            from err
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _stopped(sig: int, _: FrameType | None) -> None:
    """Runs when uvicorn re-raises the stop signal after its graceful shutdown: the process then exits 0."""
    log.info("stopped on %s after answering every request in flight", signal.Signals(sig).name)


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="safe-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--bridge", required=True, type=Path, help="bridge folder or stage_a-train run folder")
    parser.add_argument("--policy", type=Path, default=None,
                        help="stage_b-train policy folder choosing k for requests with k 'auto' or null")
    parser.add_argument("--trust-pickle", action="store_true",
                        help=f"load a policy folder with only SB3's pickled policy.zip (no {ACTOR_FILE})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    parser.add_argument("--max-batch", type=int, default=16, help="most requests answered by one model call")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a batch waits for more requests after its first")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body, in MiB")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="base model dtype (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("-v", "--verbose", action="store_true", help="DEBUG logs: one line per batch, access log")
    return parser


@console("safe-serve")
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    check_number("--port", args.port, ge=0, le=65535, integer=True)
    check_number("--max-batch", args.max_batch, ge=1, integer=True)
    check_number("--max-wait-ms", args.max_wait_ms, ge=0)
    check_number("--max-body-mb", args.max_body_mb, gt=0)
    check_number("--threads", args.threads, ge=1, integer=True, optional=True)
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = PolicyChooser.load(args.policy, args.trust_pickle) if args.policy else None
    pipe = SafePipeline.from_pretrained(args.bridge, device=args.device, dtype=args.dtype, policy=policy)
    sock = bind(args.host, args.port)
    settings = ServeSettings(args.max_batch, args.max_wait_ms, int(args.max_body_mb * 2**20),
                             str(args.policy) if args.policy else None)
    config = uvicorn.Config(create_app(pipe, settings), log_config=None, log_level=None, access_log=args.verbose,
                            timeout_graceful_shutdown=None)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    log.info("safe-serve: answering at %s%s (bridge %s, policy %s, max batch %d, max wait %g ms)", url, ANSWER_PATH,
             pipe.bridge_dir, args.policy, args.max_batch, args.max_wait_ms)
    previous = {sig: signal.signal(sig, _stopped) for sig in STOP_SIGNALS}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
