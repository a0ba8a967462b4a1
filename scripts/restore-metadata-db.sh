#!/usr/bin/env bash
# Restore a backup of Airflow's metadata database (scripts/backup-metadata-db.sh) into an empty one.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../chart/platform/files/pg-uri-env.sh
. "$REPO_ROOT/chart/platform/files/pg-uri-env.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/restore-metadata-db.sh [--dry-run] [--env-file FILE] --from SOURCE

Restores the dump SOURCE (a local file or s3://BUCKET/KEY) into the database METADATA_DB_URI
names (from the environment or the env file; never printed). That database must be EMPTY (no
tables, views or sequences outside the system schemas): a non-empty one is refused before
anything is written. Create it first, e.g. CREATE DATABASE airflow_restored OWNER airflow;
then point METADATA_DB_URI at it and, after the restore, install Airflow on it.

pg_restore runs with --single-transaction --exit-on-error (all or nothing), --no-owner and
--no-acl (the objects belong to the user of METADATA_DB_URI, whatever the source's roles were).
--dry-run still checks, read-only, that the database is reachable and empty.

  --from SOURCE    the dump to restore
  --dry-run        print every command, run none that writes
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

# Tables, views, sequences... outside the system schemas; a number.
user_relations() {
    local sql="SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    sql+=" WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
    sql+=" AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
    query psql --no-password --no-psqlrc --quiet --tuples-only --no-align --command "$sql"
}

main() {
    parse_common_args "$@"
    local source=""
    set -- "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
    while [ $# -gt 0 ]; do
        case "$1" in
        --from)
            [ $# -ge 2 ] || die "--from needs a dump file or s3://BUCKET/KEY"
            source="$2"
            shift
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
    load_config
    [ -n "$source" ] || die "no dump given: --from FILE or --from s3://BUCKET/KEY"
    [ -n "${METADATA_DB_URI:-}" ] ||
        die "METADATA_DB_URI is not set: export the URI of the EMPTY target database (postgresql://user:password@host:5432/airflow_restored) or put it in the env file"
    require_tools pg_restore psql
    case "$source" in
    s3://*/*) require_tools aws ;;
    s3://*) die "--from $source names no key: use s3://BUCKET/KEY" ;;
    *)
        [[ "$source" == /* ]] || source="$CALLER_DIR/$source"
        [ -f "$source" ] || die "dump file $source not found"
        ;;
    esac

    private_dir
    pg_uri_env "$METADATA_DB_URI" "$PRIVATE_TMP" || exit 1
    unset METADATA_DB_URI
    local where="database '$PGDATABASE' on ${PGHOST:-the local socket}${PGPORT:+:$PGPORT}"
    info "Restoring $source into $where"
    note "Connection from METADATA_DB_URI through PG* variables and a 0600 pgpass file (not shown)"
    local count
    count="$(user_relations)" || die "cannot query $where: check METADATA_DB_URI (host, port, user, password, sslmode) and that the database exists"
    [ "$count" = 0 ] ||
        die "$where is not empty ($count tables, views or sequences): a restore needs an EMPTY database. Create a new one (CREATE DATABASE airflow_restored OWNER <user>;) and point METADATA_DB_URI at it"
    note "$where is empty"

    local dump="$source"
    if [[ "$source" == s3://* ]]; then
        dump="$PRIVATE_TMP/metadata.dump"
        run aws s3 cp --only-show-errors "$source" "$dump"
    fi
    show pg_restore --list "$dump"
    [ "$DRY_RUN" = 1 ] || pg_restore --list "$dump" >/dev/null ||
        die "$source is not a pg_dump custom-format archive (pg_restore --list failed)"
    run pg_restore --no-password --single-transaction --exit-on-error --no-owner --no-acl \
        --dbname "$PGDATABASE" "$dump"
    if [ "$DRY_RUN" = 1 ]; then
        echo "Dry run finished: nothing was restored."
    else
        info "Restored: $(user_relations 2>/dev/null) tables, views and sequences in $where"
        echo "Next: point the install at it (METADATA_DB_URI) and run the install; its migration job upgrades the schema if the image is newer."
    fi
}

main "$@"
