"""``dji-media import``: the configured store as the target, a progress bar, the summary."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Optional, Sequence

from ..capabilities import require_capability
from ..errors import BadRequest, DjiMediaError, ImportFailed, MissingCapability, SourceError
from ..rules import check_workspace_id
from .opening import open_source
from .run import Importer

if TYPE_CHECKING:
    from ..config import Config

# Exit statuses: 0 the run completed (rejected rows included: they are reported, not fatal),
# 1 the source could not be read or the target could not be written, 2 bad arguments.
COMPLETED, FAILED, USAGE = 0, 1, 2


async def import_command(config: "Config", *, source_url: str, source_table: Optional[str] = None,
                         workspaces: Sequence[str] = (), dry_run: bool = False, quiet: bool = False) -> int:
    try:
        from tqdm import tqdm
    except ImportError:
        print("dji-media: tqdm is missing: pip install 'dji-media[server]'", file=sys.stderr)
        return USAGE
    for workspace in workspaces:
        try:
            check_workspace_id(workspace)
        except BadRequest as exc:
            print(f"dji-media: --workspace {workspace!r}: {exc.message}", file=sys.stderr)
            return USAGE
    try:
        # Before the source is read: a store that cannot take imported records is a
        # configuration error, not something to find out after counting a million rows.
        require_capability(config.media_store.cls, "import")
    except MissingCapability as exc:
        print(f"dji-media: {exc.message}", file=sys.stderr)
        return USAGE
    try:
        source = open_source(source_url, source_table)
    except SourceError as exc:
        print(f"dji-media: {exc.message}", file=sys.stderr)
        return FAILED
    store = importer = None
    try:
        store = config.media_store.build()
        importer = Importer(store, source, workspaces=workspaces, dry_run=dry_run)
        total = await importer.count()
        # stderr only, so stdout holds the summary alone; no bar when it is not a terminal.
        with tqdm(total=total, unit="row", file=sys.stderr, disable=quiet or not sys.stderr.isatty(),
                  desc="dry run" if dry_run else "import") as bar:
            summary = await importer.run(bar.update)
    except ImportFailed as exc:
        if exc.summary is not None:
            print("\n".join(exc.summary.lines()))
        print(f"dji-media: import stopped: {exc.message}", file=sys.stderr)
        print("dji-media: what was imported stays; running the same import again is safe", file=sys.stderr)
        return FAILED
    except DjiMediaError as exc:  # the source count, or the store could not be built
        print(f"dji-media: import failed: {exc.message}", file=sys.stderr)
        return FAILED
    finally:
        if importer is not None:
            importer.close()
        source.close()
        if store is not None:
            await store.close()
    print("\n".join(summary.lines()))
    rejected = sum(summary.rejected.values())
    if rejected:
        print(f"completed with {rejected} rejected row(s), left out of the target; fix them in the source "
              "and run again to add them (exit status 0)")
    else:
        print("completed")
    return COMPLETED
