"""``dji-media simulate-pilot``: play DJI Pilot 2 against a running server (doc/simulator.md).

    python -m dji_media.simulator.command --config conf/example.yaml

Exit status: 0 when every file is on the server (uploaded now or before), 1 when a step of the
flow failed (one line on stderr names it), 2 for wrong options, a configuration that cannot be
read, or Pillow missing. Progress goes to stdout, one line per file.

Only the standard library is imported at module level: ``dji-media --help`` loads this module
to register the subcommand's options, and must not need PyYAML, Pillow or minio-py for that.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["add_arguments", "main", "run", "add_dock_arguments", "run_dock"]

PROG = "dji-media simulate-pilot"
DEFAULT_URL = "http://127.0.0.1:8080"


def _file_count(text: str) -> int:
    from .media import MAX_FILES

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_FILES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_FILES}, got {value}")
    return value


def _mission(text: str) -> str:
    from .media import check_mission_name

    try:
        return check_mission_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options, on ``parser`` (``dji-media``'s subparser, or this module's own)."""
    from .media import DEFAULT_FILES, DEFAULT_MISSION, DEFAULT_SEED, DEFAULT_START

    parser.add_argument("--url", metavar="URL",
                        help="the server's base URL, its prefix included (default: server.host, port and prefix "
                             f"of --config, else {DEFAULT_URL})")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="the server's YAML configuration: --url, --token and --workspace default to its "
                             "listening address and (static authenticator) its token table")
    parser.add_argument("--token", help="X-Auth-Token to send (default: one from --config's static token table)")
    parser.add_argument("--workspace", metavar="WS", help="workspace id (default: that token's workspace)")
    parser.add_argument("--files", type=_file_count, default=DEFAULT_FILES, metavar="N",
                        help=f"files in the mission: photos and, from 2 up, one short video (default {DEFAULT_FILES})")
    parser.add_argument("--mission", type=_mission, default=DEFAULT_MISSION, metavar="NAME",
                        help=f"mission name, the end of its folder (default {DEFAULT_MISSION})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"the same seed and mission give the same files; another gives new ones "
                             f"(default {DEFAULT_SEED})")
    parser.add_argument("--lat", type=float, default=DEFAULT_START[0],
                        help=f"latitude the flight circles (default {DEFAULT_START[0]})")
    parser.add_argument("--lng", type=float, default=DEFAULT_START[1],
                        help=f"longitude the flight circles (default {DEFAULT_START[1]})")
    parser.add_argument("--flat", action="store_true",
                        help="object keys <prefix>/<name> instead of <prefix>/<mission folder>/<name>")


def _base_url(config: "Config") -> Optional[str]:
    """Where the configured server listens, as a client on this machine reaches it; None when
    the port is chosen at start-up (0)."""
    server = config.server
    if not server.port:
        return None
    host = server.host
    if host in ("", "0.0.0.0", "::"):  # listening everywhere: loopback reaches it
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert_file else "http"
    prefix = server.prefix.strip("/")
    return f"{scheme}://{host}:{server.port}" + (f"/{prefix}" if prefix else "")


def _from_config(path: str) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(url, token, workspace) from a configuration: token and workspace only with a static
    token table. ConfigError when it cannot be read."""
    from ..backends.auth import StaticTokenAuthenticator
    from ..config import load_config

    config = load_config(path)
    token = workspace = None
    if issubclass(config.authenticator.cls, StaticTokenAuthenticator):
        token, workspace = config.authenticator.build().example()
    return _base_url(config), token, workspace


def run(args: argparse.Namespace) -> int:
    """The command, on parsed options (``dji-media simulate-pilot`` calls this)."""
    import importlib.util

    from ..errors import ConfigError, DjiMediaError

    def fail(status: int, message: str) -> int:
        print(f"{PROG}: {message}", file=sys.stderr)
        return status

    url, token, workspace = args.url, args.token, args.workspace
    if args.config and not (url and token and workspace):
        try:
            conf_url, conf_token, conf_workspace = _from_config(args.config)
        except ConfigError as exc:
            return fail(2, f"configuration error: {exc.message}")
        url, token, workspace = url or conf_url, token or conf_token, workspace or conf_workspace
    url = url or DEFAULT_URL
    if not token or not workspace:
        return fail(2, "give --token and --workspace, or --config naming a configuration whose authenticator "
                       "is a static token table")
    if importlib.util.find_spec("PIL") is None:
        return fail(2, "Pillow is missing (it makes the JPEGs): pip install 'dji-media[simulator]'")

    from . import pilot2
    from .media import generate_mission

    try:
        mission = generate_mission(args.files, mission=args.mission, seed=args.seed, start=(args.lat, args.lng))
    except ValueError as exc:
        return fail(2, str(exc))
    photos = sum(1 for f in mission.files if f.kind == "photo")
    videos = len(mission.files) - photos
    print(f"simulating DJI Pilot 2 (aircraft {mission.sn}) against {url}, workspace {workspace}: mission "
          f"{mission.folder}, {photos} photo(s) and {videos} video(s)", flush=True)
    try:
        report = pilot2.run(mission, base_url=url, token=token, workspace=workspace, flat=args.flat,
                            progress=lambda line: print(f"  {line}", flush=True))
    except DjiMediaError as exc:
        return fail(1, exc.message)
    total = len(mission.files)
    if report.uploaded:
        print(f"done: {len(report.uploaded)} uploaded, {len(report.skipped)} already on the server; "
              f"group-upload-callback: {total} of {total} files of mission {mission.file_group_id}")
    else:
        print(f"done: nothing new to upload, all {total} files were already on the server "
              f"(another --seed or --mission makes new ones)")
    return 0


DOCK_PROG = "dji-media simulate-dock"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {value}")
    return value


def add_dock_arguments(parser: argparse.ArgumentParser) -> None:
    """``dji-media simulate-dock``'s options."""
    from .media import DEFAULT_FILES, DEFAULT_MISSION, DEFAULT_SEED

    parser.add_argument("--broker", metavar="URL",
                        help=f"the broker the server uses: mqtt://host:port or mqtts://host:port (default: "
                             f"mqtt.broker_url of --config, else {DEFAULT_BROKER})")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="the server's YAML configuration: --broker defaults to its mqtt.broker_url, --sn to "
                             "the first dock of its devices table")
    parser.add_argument("--sn", metavar="DOCKSN", help="the dock's serial number (letters and digits); the server's "
                        "device directory must place it in a workspace, or it is never answered")
    parser.add_argument("--username", help="MQTT user name (a broker with access control: usually the dock's sn)")
    parser.add_argument("--password-env", metavar="NAME",
                        help="the environment variable holding the MQTT password (never on the command line)")
    parser.add_argument("--tls-ca-file", metavar="FILE", help="CA bundle of an mqtts:// broker's certificate")
    parser.add_argument("--files", type=_file_count, default=DEFAULT_FILES, metavar="N",
                        help=f"files in the mission (default {DEFAULT_FILES})")
    parser.add_argument("--mission", type=_mission, default=DEFAULT_MISSION, metavar="NAME",
                        help=f"mission name: with --seed, picks the files (default {DEFAULT_MISSION})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"(default {DEFAULT_SEED})")
    parser.add_argument("--timeout", type=_positive, default=5.0, metavar="SECONDS",
                        help="seconds to wait for each reply before sending the message again (default 5)")
    parser.add_argument("--retries", type=_retries, default=3,
                        help="times an unanswered message is sent again, same tid and bid (default 3)")


def run_dock(args: argparse.Namespace) -> int:
    """``dji-media simulate-dock`` on parsed options: 0 when every file is recorded, 1 when a
    step failed (named on stderr), 2 for wrong options."""
    import importlib.util
    import os

    from ..devices import GATEWAY_SN_RE
    from ..errors import ConfigError, DjiMediaError

    def fail(status: int, message: str) -> int:
        print(f"{DOCK_PROG}: {message}", file=sys.stderr)
        return status

    broker, sn = args.broker, args.sn
    if args.config and not (broker and sn):
        from ..config import load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return fail(2, f"configuration error: {exc.message}")
        if config.mqtt is not None:
            broker = broker or config.mqtt.broker_url
        sn = sn or next(iter(config.devices.devices), None)
    broker = broker or DEFAULT_BROKER
    if not sn or not GATEWAY_SN_RE.fullmatch(sn):
        return fail(2, "give --sn, the dock's serial number (letters and digits), or --config with a devices table")
    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            return fail(2, f"environment variable {args.password_env} is not set")
    for module, extra in (("PIL", "simulator"), ("aiomqtt", "mqtt")):
        if importlib.util.find_spec(module) is None:
            return fail(2, f"{module} is missing: pip install 'dji-media[{extra}]'")

    from . import dock
    from .media import generate_mission

    mission = generate_mission(args.files, mission=args.mission, seed=args.seed)
    print(f"simulating DJI Dock {sn} (aircraft {mission.sn}) through {broker}: flight {dock.flight_id_of(mission)}, "
          f"{len(mission.files)} file(s)", flush=True)
    try:
        report = dock.run(mission, broker_url=broker, sn=sn, timeout=args.timeout, retries=args.retries,
                          username=args.username, password=password, tls_ca_file=args.tls_ca_file,
                          progress=lambda line: print(f"  {line}", flush=True))
    except DjiMediaError as exc:
        return fail(1, exc.message)
    retried = sum(1 for f in report.files if f.attempts > 1)
    print(f"done: {len(report.files)} file(s) uploaded and recorded (flight {report.flight_id})"
          + (f", {retried} after a retry" if retried else ""))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dji_media.simulator.command [options]``; the exit status."""
    parser = argparse.ArgumentParser(prog=PROG, description="Play DJI Pilot 2 against a running dji_media server: "
                                     "upload generated photos and a video through the real flow.")
    add_arguments(parser)
    arguments: List[str] = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(parser.parse_args(arguments))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
