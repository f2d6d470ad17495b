"""The ``dji-media`` command: ``serve``, ``check``, ``import``, ``migrate``, ``sweep``,
``devices``, ``simulate-pilot`` and ``simulate-dock``.

``serve`` chooses between one process (``dji_media.runtime``) and the worker supervisor
(``dji_media.workers``, whose workers each run the runtime): the choice lives here, above both.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, List, Optional

from .errors import ConfigError, DjiMediaError

if TYPE_CHECKING:  # imported when a command runs: --help needs no YAML parser
    from .config import Config
    from .service import MediaService

__all__ = ["main", "serve"]


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _load(path: str) -> "Config":
    from .config import load_config

    return load_config(path)


def serve(config: "Config") -> int:
    """``dji-media serve``: one process, or ``server.workers`` processes under a supervisor.
    Returns the exit status; start-up failures raise DjiMediaError."""
    if config.server.workers > 1:
        from .workers import supervise

        return supervise(config)
    from .runtime import Runtime

    async def one_process() -> int:
        # Built inside the loop: on Python 3.9 asyncio objects bind to the loop of their making.
        return await Runtime.from_config(config).serve()

    return asyncio.run(one_process())


async def _check(config: "Config") -> int:
    """Build every backend and ask each to prove it works; one line each."""
    from .wiring import build_service, describe_database, start_embedded_s3

    failures = 0
    embedded = start_embedded_s3(config)
    if embedded is not None:
        print(f"embedded_s3: ok (SeaweedFS at {embedded.endpoint})")
    service = build_service(config)
    try:
        checks = (
            ("database", service.media_store.ping(), describe_database(config) or config.media_store.cls.__name__),
            ("storage", service.object_store.ping(), config.object_store.cls.__name__),
            ("credentials", service.credentials.ping(), config.credentials.cls.__name__),
        )
        for name, probe, what in checks:
            try:
                await probe
                print(f"{name}: ok ({what})")
            except DjiMediaError as exc:
                failures += 1
                print(f"{name}: FAILED ({what}): {exc.message}")
        if config.devices.backend == "database":
            failures += await _check_devices(config, service)
        if config.mqtt is not None:
            failures += await _check_mqtt(config, service)
    finally:
        await service.close()
        if embedded is not None:
            embedded.stop()
    print("configuration: ok" if not failures else f"{failures} check(s) failed")
    return 1 if failures else 0


async def _check_devices(config: "Config", service: "MediaService") -> int:
    """Build the database-backed device directory and read its table once (it lives in the
    media store's database, so a broken table shows here, not when the first dock calls)."""
    from .wiring import build_device_directory

    try:
        directory = build_device_directory(config, service)
    except DjiMediaError as exc:
        print(f"devices: FAILED (database): {exc.message}")
        return 1
    try:
        bound = len(await directory.list())  # type: ignore[attr-defined]
    except DjiMediaError as exc:
        print(f"devices: FAILED (database): {exc.message}")
        return 1
    finally:
        await directory.close()
    print(f"devices: ok (database, {bound} dock(s) bound)")
    return 0


async def _check_mqtt(config: "Config", service: "MediaService") -> int:
    """Connect to the broker and subscribe as ``serve`` would, under a client id of its own (the
    server's session, if one runs, is left alone); the number of failures (0 or 1)."""
    import dataclasses as _dc
    import uuid

    from .wiring import build_device_directory, build_mqtt

    assert config.mqtt is not None
    checking = _dc.replace(config, mqtt=_dc.replace(config.mqtt, client_id=f"{config.mqtt.client_id}-check-"
                                                    f"{uuid.uuid4().hex[:6]}", session_expiry_seconds=0))
    try:
        transport = build_mqtt(checking, service, build_device_directory(config, service))
        assert transport is not None
        await transport.start()
        await transport.stop(0.0)
    except DjiMediaError as exc:
        print(f"mqtt: FAILED ({config.mqtt.broker_url}): {exc.message}")
        return 1
    print(f"mqtt: ok ({config.mqtt.broker_url}, {len(transport.topics + transport.reply_topics)} subscriptions)")
    return 0


async def _migrate(config: "Config", dry_run: bool) -> int:
    """Upgrade the configured database's schema in place; one line per step."""
    from .wiring import describe_database

    store = None
    try:
        store = config.media_store.build()
        print(f"database: {describe_database(config) or config.media_store.cls.__name__}")
        plan = await store.migrate(dry_run=True)
        if plan.target is None:
            print(f"{type(store).__name__} keeps no versioned schema: nothing to migrate")
            return 0
        found = "none yet" if plan.found is None else f"version {plan.found}"
        print(f"schema: {found}; this dji_media works with version {plan.target}")
        if not plan.steps:
            print("up to date: nothing to do")
            return 0
        if dry_run:
            for line in plan.steps:
                print(f"  {line}")
            print("dry run: nothing was changed")
            return 0
        done = await store.migrate(progress=lambda line: print(f"  {line}", flush=True))
        print(f"migrated: schema version {done.target}" if done.steps else "up to date: nothing to do")
        return 0
    except DjiMediaError as exc:
        print(f"dji-media: migrate failed: {exc.message}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            await store.close()


async def _sweep(config: "Config", wait: bool) -> int:
    """One pass of the storage sweep by hand (doc/operations.md): takes the lease, resumes an
    unfinished pass or starts one, prints a summary. 0 when the pass finished; 1 when another
    process holds the lease (without ``wait``), or the pass failed or was interrupted."""
    from .sweep import BUSY, FINISHED, make_holder_id
    from .wiring import build_service, build_sweep, describe_database, start_embedded_s3

    service = build_service(config)
    embedded = None
    try:
        sweep = build_sweep(config, service, holder_id=make_holder_id("cli"), force=True)
        assert sweep is not None
        try:
            await service.object_store.ping()
        except DjiMediaError:
            # The embedded S3 server is usually the running server's; start it only when nobody serves it.
            embedded = await asyncio.get_running_loop().run_in_executor(None, start_embedded_s3, config)
            if embedded is None:
                raise
        for name, probe in (("database", service.media_store.ping), ("storage", service.object_store.ping)):
            try:
                await probe()
            except DjiMediaError as exc:
                print(f"dji-media: sweep: {name}: {exc.message}", file=sys.stderr)
                return 1
        print(f"sweeping {describe_database(config) or config.media_store.cls.__name__} against "
              f"{config.object_store.cls.__name__} (holder {sweep.holder_id})", flush=True)
        report = await sweep.run_once()
        told = False
        while report.outcome == BUSY and wait:
            if not told:
                print("another process holds the sweep's lease; waiting for it", flush=True)
                told = True
            await asyncio.sleep(min(sweep.lease_seconds / 3, 5.0))
            report = await sweep.run_once()
        if report.outcome == BUSY:
            print("dji-media: sweep: another process holds the sweep's lease (a server is sweeping); "
                  "try again later or pass --wait", file=sys.stderr)
            return 1
        print(f"{'resumed pass' if report.resumed else 'pass'} {report.outcome}"
              + (f": {report.problem}" if report.problem else ""))
        for label, value in (
            ("workspaces", report.workspaces), ("objects listed", report.objects_listed),
            ("records present", report.present), ("records changed (removed)", report.changed),
            ("records gone (removed)", report.gone), ("records rewritten meanwhile (kept)", report.kept),
            ("objects left (unrecorded)", report.unrecorded),
            ("records not judged", report.outside_prefix + report.too_new),
            ("storage requests", report.storage_requests),
        ):
            print(f"  {label}: {value}")
        print(f"  duration: {report.duration_seconds:.1f} s")
        return 0 if report.outcome == FINISHED else 1
    finally:
        await service.close()
        if embedded is not None:
            embedded.stop()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dji-media", description="DJI Pilot 2 media back end")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the HTTP server"), ("check", "validate the configuration "
                       "and reach the database and the storage")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", "-c", required=True, help="YAML configuration file")
        if name == "serve":
            sub.add_argument("--workers", type=_workers, metavar="N",
                             help="processes serving the port (default: server.workers, else 1)")
    sub = commands.add_parser("import", help="copy media records from another server's database into the "
                              "configured store (doc/importing.md)")
    sub.add_argument("--config", "-c", required=True, help="YAML configuration file (names the target store)")
    sub.add_argument("--source", required=True, metavar="URL",
                     help="mysql://user:password@host/db (DJI's demo server) or sqlite:///path/to/file")
    sub.add_argument("--source-table", metavar="NAME",
                     help="source table (default: media_file for mysql://, media_files for sqlite://)")
    sub.add_argument("--workspace", action="append", default=[], metavar="WS",
                     help="import only this workspace (repeatable)")
    sub.add_argument("--dry-run", action="store_true", help="read and check everything, write nothing")
    sub.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    sub = commands.add_parser("migrate", help="upgrade the configured database's schema in place to the version "
                              "this release works with (doc/operations.md)")
    sub.add_argument("--config", "-c", required=True, help="YAML configuration file (names the database)")
    sub.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    sub = commands.add_parser("sweep", help="compare the bucket with the records once, now: confirm present "
                              "objects, remove the records of gone or overwritten ones (doc/operations.md)")
    sub.add_argument("--config", "-c", required=True, help="YAML configuration file")
    sub.add_argument("--wait", action="store_true",
                     help="when another process is sweeping, wait for its lease instead of exiting with 1")
    sub = commands.add_parser("devices", help="bind docks to workspaces, unbind them, list the bindings, in the "
                              "configured database (devices: {backend: database}; doc/mqtt.md)")
    sub.add_argument("--config", "-c", required=True, help="YAML configuration file (names the database)")
    actions = sub.add_subparsers(dest="action", required=True)
    bind = actions.add_parser("bind", help="bind a dock to a workspace (moving it from another one)")
    bind.add_argument("gateway_sn", metavar="SN", help="the dock's serial number (letters and digits)")
    bind.add_argument("workspace_id", metavar="WORKSPACE", help="the workspace id")
    bind.add_argument("--note", metavar="TEXT", help="a note kept with the binding (at most 255 characters)")
    unbind = actions.add_parser("unbind", help="remove a dock's binding (its messages are then ignored)")
    unbind.add_argument("gateway_sn", metavar="SN", help="the dock's serial number")
    listing = actions.add_parser("list", help="one line per bound dock: sn, workspace, bound at (UTC), note")
    listing.add_argument("--workspace", dest="workspace_id", metavar="WS", help="only this workspace's docks")
    sub = commands.add_parser("simulate-pilot", help="play DJI Pilot 2 against a running server: upload "
                              "generated photos and a video through the real flow (doc/simulator.md)")
    from .simulator.command import add_arguments as simulator_arguments  # standard library only

    simulator_arguments(sub)
    sub = commands.add_parser("simulate-dock", help="play a DJI Dock against a running server through an MQTT "
                              "broker: storage_config_get, uploads, file_upload_callback (doc/mqtt.md)")
    from .simulator.command import add_dock_arguments

    add_dock_arguments(sub)
    args = parser.parse_args(argv)
    if args.command == "simulate-pilot":  # a client of a running server: --config is optional, only read
        from .simulator.command import run as simulate_pilot

        return simulate_pilot(args)
    if args.command == "simulate-dock":
        from .simulator.command import run_dock

        return run_dock(args)

    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(f"dji-media: configuration error: {exc.message}", file=sys.stderr)
        return 2
    if getattr(args, "workers", None):
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, workers=args.workers))
        from .wiring import check_mqtt_workers

        try:
            check_mqtt_workers(config)  # the file was checked with its own worker count
        except ConfigError as exc:
            print(f"dji-media: configuration error: {exc.message}", file=sys.stderr)
            return 2
    # With several workers each line says which process wrote it.
    pid = " [%(process)d]" if args.command == "serve" and config.server.workers > 1 else ""
    logging.basicConfig(level=config.log_level.upper(),
                        format=f"%(asctime)s{pid} %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "check":
            return asyncio.run(_check(config))
        if args.command == "migrate":
            return asyncio.run(_migrate(config, dry_run=args.dry_run))
        if args.command == "sweep":
            return asyncio.run(_sweep(config, wait=args.wait))
        if args.command == "devices":
            from .devices_command import devices_command

            return asyncio.run(devices_command(
                config, args.action, gateway_sn=getattr(args, "gateway_sn", None),
                workspace_id=getattr(args, "workspace_id", None), note=getattr(args, "note", None)))
        if args.command == "import":
            from .importer.command import import_command

            return asyncio.run(import_command(
                config, source_url=args.source, source_table=args.source_table, workspaces=args.workspace,
                dry_run=args.dry_run, quiet=args.quiet))
        return serve(config)
    except DjiMediaError as exc:
        print(f"dji-media: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # python -m dji_media.cli
    sys.exit(main())
