"""`sft-broker`: the RDP access broker sftd starts on the target server.

Flags only (sftd passes exactly these). A missing or bad flag or TLS file is one
`sft-broker: error: …` line on stderr and exit status 2; SIGTERM/SIGINT end every grant
and exit 0. argparse, not click: nobody types this command, and it starts lighter.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from runtime.errors import SftError
from runtime.logging import configure_logging
from runtime.server import Endpoint, ListenError, parse_endpoint
from services.broker.server import BrokerServer, BrokerSettings, control_client
from services.broker.tls import TLSFilesError, load_broker_tls

__all__ = ["main", "parse_settings"]

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def _fail(message: str, code: int) -> NoReturn:
    print(f"sft-broker: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _endpoint(text: str) -> Endpoint:
    try:
        return parse_endpoint(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 0")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft-broker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--listen",
        type=_endpoint,
        required=True,
        metavar="HOST:PORT",
        help="where to serve mTLS gRPC (sftd: BrokerListenAddress:BrokerPort)",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="broker.crt, broker.key and ca.pem",
    )
    parser.add_argument(
        "--control",
        type=Path,
        required=True,
        metavar="PATH",
        help="sftd's control socket (Windows: its control.endpoint file)",
    )
    parser.add_argument(
        "--target",
        type=_endpoint,
        required=True,
        metavar="HOST:PORT",
        help="the RDP service tunnels reach",
    )
    for flag, kind, default, meaning in (
        ("--grace-seconds", _non_negative, 60, "after a grant's last tunnel closes, before "
         "the account is disabled (sftd: SessionGracePeriod)"),
        ("--grant-seconds", _positive, 300, "how long a grant waits for its first tunnel"),
        ("--max-tunnels", _positive, 1000, "tunnels open at once, in all"),
        ("--max-tunnels-per-user", _positive, 64, "tunnels open at once, per person"),
        ("--idle-timeout-seconds", _positive, 3600, "close a tunnel after this long with no "
         "bytes either way"),
    ):  # fmt: skip
        parser.add_argument(
            flag, type=kind, default=default, metavar="N", help=f"{meaning} [{default}]"
        )
    parser.add_argument(
        "--metrics-listen",
        type=_endpoint,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics over plain HTTP here (default: none)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="json", choices=["json", "console"])
    return parser


def parse_settings(argv: Sequence[str]) -> tuple[BrokerSettings, argparse.Namespace]:
    """Return the settings the command line asks for (argparse exits 2 on a bad one)."""
    args = _parser().parse_args(argv)
    settings = BrokerSettings(
        listen=args.listen,
        tls_dir=args.tls_dir,
        control=args.control,
        target=args.target,
        grace_seconds=args.grace_seconds,
        grant_seconds=args.grant_seconds,
        max_tunnels=args.max_tunnels,
        max_tunnels_per_user=args.max_tunnels_per_user,
        idle_timeout_seconds=args.idle_timeout_seconds,
        metrics_listen=args.metrics_listen,
    )
    return settings, args


async def _serve(settings: BrokerSettings) -> None:
    tls = load_broker_tls(settings.tls_dir)
    server = BrokerServer(settings, tls, control_client(settings.control))
    await server.run_until_signalled()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the broker until signalled."""
    settings, args = parse_settings(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level, args.log_format)
    try:
        asyncio.run(_serve(settings))
    except TLSFilesError as error:
        _fail(str(error), EXIT_CONFIG)
    except ListenError as error:
        _fail(str(error), EXIT_CONFIG)
    except SftError as error:
        _fail(error.message, EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(0)
