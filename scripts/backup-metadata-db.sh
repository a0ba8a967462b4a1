#!/usr/bin/env bash
# Back up Airflow's metadata database: one consistent pg_dump (custom format) to a file or S3.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source-path=SCRIPTDIR source=../chart/platform/files/pg-uri-env.sh
. "$REPO_ROOT/chart/platform/files/pg-uri-env.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/backup-metadata-db.sh [--dry-run] [--env-file FILE] [--to TARGET]

Dumps the database METADATA_DB_URI names (from the environment or the env file; never printed)
with pg_dump --format=custom: one snapshot, so the dump is consistent while Airflow runs.
TARGET (default: BACKUP_TARGET from the env file) is
  FILE                  a local file (refused if it exists)
  DIR/                  a local folder: airflow-metadata-<UTC time>.dump inside it
  s3://BUCKET/KEY       an S3 object (aws CLI, its usual credentials)
  s3://BUCKET/PREFIX/   airflow-metadata-<UTC time>.dump under the prefix
The dump is written to a private temporary file, checked with pg_restore --list, and only
then moved or uploaded: a failed backup leaves no partial file or object.
Point METADATA_DB_URI at the database itself, not at PgBouncer.

  --to TARGET      where the dump goes
  --dry-run        print every command, run none
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
Restore: scripts/restore-metadata-db.sh.
EOF_USAGE
}

# The dump's final name: TARGET, or a timestamped file under a folder/prefix TARGET.
target_path() {
    case "$1" in
    */) printf '%sairflow-metadata-%s.dump' "$1" "$(date -u +%Y%m%dT%H%M%SZ)" ;;
    *) printf '%s' "$1" ;;
    esac
}

check_target() {
    case "$1" in
    s3://*/*) require_tools aws ;;
    s3://*) die "--to $1 names no key: use s3://BUCKET/KEY or s3://BUCKET/PREFIX/" ;;
    *)
        [ ! -e "$1" ] || die "$1 exists: a backup never overwrites one; choose a new name or a folder (DIR/)"
        [ -d "$(dirname "$1")" ] || die "folder $(dirname "$1") does not exist: create it first"
        ;;
    esac
}

main() {
    parse_common_args "$@"
    local target="${BACKUP_TARGET:-}"
    set -- "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
    while [ $# -gt 0 ]; do
        case "$1" in
        --to)
            [ $# -ge 2 ] || die "--to needs a file, folder/ or s3:// target"
            target="$2"
            shift
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
    load_config
    target="${target:-${BACKUP_TARGET:-}}"
    [ -n "$target" ] || die "no target: give --to FILE, --to DIR/ or --to s3://BUCKET/KEY (or BACKUP_TARGET in .env)"
    [ -n "${METADATA_DB_URI:-}" ] ||
        die "METADATA_DB_URI is not set: export it (postgresql://user:password@host:5432/airflow) or put it in the env file"
    case "$target" in
    s3://*) ;;
    *) [[ "$target" == /* ]] || target="$CALLER_DIR/$target" ;;
    esac
    target="$(target_path "$target")"
    require_tools pg_dump pg_restore
    check_target "$target"

    private_dir
    pg_uri_env "$METADATA_DB_URI" "$PRIVATE_TMP" || exit 1
    unset METADATA_DB_URI
    info "Backing up database '$PGDATABASE' on ${PGHOST:-the local socket}${PGPORT:+:$PGPORT} as ${PGUSER:-$(id -un)} to $target"
    note "Connection from METADATA_DB_URI through PG* variables and a 0600 pgpass file (not shown)"
    local dump="$PRIVATE_TMP/metadata.dump"
    run pg_dump --format=custom --no-password --file "$dump"
    show pg_restore --list "$dump"
    [ "$DRY_RUN" = 1 ] || pg_restore --list "$dump" >/dev/null ||
        die "the dump does not read back (pg_restore --list failed): nothing was stored"
    case "$target" in
    s3://*) run aws s3 cp --only-show-errors "$dump" "$target" ;;
    *)
        # Same filesystem as the target first, then an atomic rename: never a partial file.
        run cp "$dump" "$target.partial" || {
            rm -f "$target.partial"
            die "copying the dump to $target.partial failed: nothing was stored"
        }
        run mv "$target.partial" "$target"
        ;;
    esac
    if [ "$DRY_RUN" = 1 ]; then
        echo "Dry run finished: nothing was run or changed."
    else
        info "Backup stored: $target ($(wc -c <"$dump") bytes)"
    fi
}

main "$@"
