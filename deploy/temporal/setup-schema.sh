#!/bin/sh
# One-shot compose job (temporalio/admin-tools): create Temporal's two PostgreSQL databases and bring their
# schemas to the version this admin-tools image ships. Safe to re-run on every `docker compose up`:
# `create` ignores an existing database and `setup-schema`/`update-schema` only move a schema forward.
set -eu

: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${DB_PORT:?}" "${SQL_PASSWORD:?set SQL_PASSWORD}"
SCHEMA_ROOT=/etc/temporal/schema/postgresql/v12

sql_tool() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" -u "$POSTGRES_USER" "$@"
}

for pair in temporal:temporal temporal_visibility:visibility; do
    db="${pair%%:*}"
    schema="${pair#*:}"
    echo "unship: preparing database ${db}"
    sql_tool --db "$db" create
    sql_tool --db "$db" setup-schema -v 0.0
    sql_tool --db "$db" update-schema -d "${SCHEMA_ROOT}/${schema}/versioned"
done
echo "unship: Temporal schemas are up to date"
