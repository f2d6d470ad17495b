"""Importing media records from another server's database (``dji-media import``).

    source = open_source("mysql://reader:secret@old-host/cloud_sample")   # DJI's demo server
    importer = Importer(store, source, dry_run=True)
    try:
        summary = await importer.run()
    finally:
        importer.close()
        source.close()
    print("\\n".join(summary.lines()))

``sources`` says what a source is and opens one from a URL; ``dji_demo`` and ``sqlite_source``
read the two schemas; ``records`` turns a row into a checked record; ``run`` does the import and
``command`` is ``dji-media import``. doc/importing.md describes the mapping and the rules.
"""
from .dji_demo import DjiDemoSource
from .run import Importer, ImportFailed, ImportSummary
from .sources import Source, SourceError, open_source
from .sqlite_source import SqliteSource

__all__ = ["ImportFailed", "Importer", "ImportSummary", "DjiDemoSource", "Source", "SourceError",
           "SqliteSource", "open_source"]
