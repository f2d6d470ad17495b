-- Schema version 1 (commit 69384d1), written by tests/schema_v1/generate.py; do not edit.
CREATE TABLE "{prefix}schema" ("id" INTEGER NOT NULL PRIMARY KEY, "version" INTEGER NOT NULL);
CREATE TABLE "{prefix}media_file" ("id" INTEGER NOT NULL PRIMARY KEY, "workspace_id" VARCHAR(64) NOT NULL, "fingerprint" VARCHAR(64) NOT NULL, "tiny_fingerprint" VARCHAR(128), "object_key" VARCHAR(1024) NOT NULL, "name" VARCHAR(255), "path" VARCHAR(1024), "sub_file_type" INTEGER, "file_group_id" VARCHAR(128), "drone_model_key" VARCHAR(128), "payload_model_key" VARCHAR(128), "is_original" INTEGER, "sn" VARCHAR(128), "gimbal_yaw_degree" REAL, "absolute_altitude" REAL, "relative_altitude" REAL, "created_time" DATETIME, "created_time_text" VARCHAR(64), "shoot_lat" REAL, "shoot_lng" REAL, "raw_json" TEXT NOT NULL, "revision" INTEGER NOT NULL, "verified_at" DATETIME, "created_at" DATETIME NOT NULL, "updated_at" DATETIME NOT NULL);
CREATE UNIQUE INDEX "{prefix}media_file_workspace_id_fingerprint" ON "{prefix}media_file" ("workspace_id", "fingerprint");
CREATE INDEX "{prefix}media_file_workspace_id_tiny_fingerprint" ON "{prefix}media_file" ("workspace_id", "tiny_fingerprint");
CREATE TABLE "{prefix}file_group" ("id" INTEGER NOT NULL PRIMARY KEY, "workspace_id" VARCHAR(64) NOT NULL, "file_group_id" VARCHAR(128) NOT NULL, "file_count" INTEGER NOT NULL, "file_uploaded_count" INTEGER NOT NULL, "updated_at" DATETIME NOT NULL);
CREATE UNIQUE INDEX "{prefix}file_group_workspace_id_file_group_id" ON "{prefix}file_group" ("workspace_id", "file_group_id");
INSERT INTO "{prefix}schema" ("version") VALUES (1);
