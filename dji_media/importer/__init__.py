"""Importing media records from another server's database (``dji-media import``).

    source = open_source("mysql://reader:secret@old-host/cloud_sample")   # DJI's demo server
    importer = Importer(store, source, dry_run=True)
    try:
        summary = await importer.run()
    finally:
        importer.close()
        source.close()
    print("\\n".join(summary.lines()))

``sources`` says what a source is; ``dji_demo`` and ``sqlite_source`` read the two schemas;
``opening`` opens one from a URL; ``records`` turns a row into a record checked with the core's
rules (``dji_media.rules``); ``run`` does the import and ``command`` is ``dji-media import``. Their
errors are in ``dji_media.errors``. doc/importing.md describes the mapping and the rules.
"""
from ..errors import ImportFailed, SourceError
from .dji_demo import DjiDemoSource
from .opening import open_source
from .run import Importer, ImportSummary
from .sources import Source
from .sqlite_source import SqliteSource

__all__ = ["ImportFailed", "Importer", "ImportSummary", "DjiDemoSource", "Source", "SourceError",
           "SqliteSource", "open_source"]
