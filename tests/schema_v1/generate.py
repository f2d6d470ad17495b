"""Wrote {sqlite,postgresql,mysql}.sql here: the tables of schema version 1, the first released
one (commit 69384d1), as that release created them, frozen so that later changes to the models
cannot change what tests/test_migrations.py upgrades. Not run by the suite; it was run once:

    git show 69384d1:dji_media/backends/peewee_schema.py > /tmp/v1_schema.py
    python tests/schema_v1/generate.py /tmp/v1_schema.py tests/schema_v1

``{prefix}`` stands for the table prefix and, on MySQL, ``{collation}`` for the binary collation
version 1 chose from what the server has (``_mysql_collation``).
"""
import importlib.util
import sys

import peewee

HEADER = "-- Schema version 1 (commit 69384d1), written by tests/schema_v1/generate.py; do not edit.\n"


def main(v1_schema_path: str, out_dir: str) -> None:
    spec = importlib.util.spec_from_file_location("dji_media.backends.v1_schema", v1_schema_path)
    v1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(v1)
    assert v1.SCHEMA_VERSION == 1
    for name, db in (("sqlite", peewee.SqliteDatabase(None)), ("postgresql", peewee.PostgresqlDatabase(None)),
                     ("mysql", peewee.MySQLDatabase(None))):
        models = v1._build_models(db, "{prefix}")
        statements = []
        for model in models:
            if name == "mysql":  # as version 1's _ensure_schema set them
                model._meta.table_settings = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4", "COLLATE={collation}"]
            statements.append(model._schema._create_table(safe=False).query()[0])
            statements.extend(model._schema._create_index(index, safe=False).query()[0]
                              for index in model._meta.fields_to_index())
        open_quote, close_quote = db.quote[0], db.quote[-1]
        statements.append(f"INSERT INTO {open_quote}{models[0]._meta.table_name}{close_quote} "
                          f"({open_quote}version{close_quote}) VALUES (1)")
        with open(f"{out_dir}/{name}.sql", "w") as out:
            out.write(HEADER + "".join(statement + ";\n" for statement in statements))


if __name__ == "__main__":
    main(*sys.argv[1:])
