# shellcheck shell=bash
# pg_uri_env URI DIR: point libpq (pg_dump, pg_restore, psql) at the database of a PostgreSQL URI
# without the URI or its password on any command line: exports PGHOST, PGPORT, PGUSER,
# PGDATABASE and the PGSSL*/options variables, and writes the password to DIR/pgpass (mode 0600,
# PGPASSFILE). DIR must be private to the caller, who deletes it.
#
# Accepts postgres://, postgresql:// and SQLAlchemy's postgresql+<driver>:// (what Airflow's
# sql_alchemy_conn holds), percent-encoded parts, and the query parameters libpq has variables
# for. Errors never repeat the URI. Sourced by scripts/backup-metadata-db.sh,
# scripts/restore-metadata-db.sh and, from a ConfigMap, the backup CronJob's container.

# Percent-decoding: a backslash stays literal, %XX becomes the byte.
pg_uri_decode() {
    local value="${1//\\/\\\\}"
    printf '%b' "${value//%/\\x}"
}

pg_uri_env() {
    local uri="$1" dir="$2" rest scheme query="" path="" userinfo="" hostport user="" password=""
    local host="" port="" pair key value have_password=0
    unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
        PGSSLMODE PGSSLROOTCERT PGSSLCERT PGSSLKEY PGCONNECT_TIMEOUT PGAPPNAME PGOPTIONS \
        PGTARGETSESSIONATTRS
    case "$uri" in
    *://*) ;;
    *)
        echo "ERROR: the database URI is not a URI (expected postgresql://user:password@host:port/database)" >&2
        return 2
        ;;
    esac
    scheme="${uri%%://*}"
    case "$scheme" in
    postgres | postgresql | postgresql+*) ;;
    *)
        echo "ERROR: the database URI's scheme is '$scheme': a PostgreSQL URI (postgresql://...) is needed" >&2
        return 2
        ;;
    esac
    rest="${uri#*://}"
    if [[ "$rest" == *"?"* ]]; then
        query="${rest#*\?}"
        rest="${rest%%\?*}"
    fi
    if [[ "$rest" == */* ]]; then
        path="${rest#*/}"
        rest="${rest%%/*}"
    fi
    if [[ "$rest" == *@* ]]; then
        userinfo="${rest%@*}"
        rest="${rest##*@}"
    fi
    hostport="$rest"
    if [ -n "$userinfo" ]; then
        user="$(pg_uri_decode "${userinfo%%:*}")"
        if [[ "$userinfo" == *:* ]]; then
            password="$(pg_uri_decode "${userinfo#*:}")"
            have_password=1
        fi
    fi
    if [[ "$hostport" == \[* ]]; then # [IPv6]:port
        host="${hostport%%]*}"
        host="${host#\[}"
        [[ "$hostport" != *"]:"* ]] || port="${hostport##*]:}"
    else
        host="${hostport%%:*}"
        [[ "$hostport" != *:* ]] || port="${hostport#*:}"
    fi
    [ -z "$host" ] || PGHOST="$(pg_uri_decode "$host")"
    [ -z "$path" ] || PGDATABASE="$(pg_uri_decode "$path")"
    [ -z "$port" ] || PGPORT="$port"
    [ -z "$user" ] || PGUSER="$user"
    export PGHOST PGDATABASE PGPORT PGUSER
    if [ -n "$query" ]; then
        local IFS='&'
        for pair in $query; do
            key="${pair%%=*}"
            value="$(pg_uri_decode "${pair#*=}")"
            case "$key" in
            host) export PGHOST="$value" ;;
            port) export PGPORT="$value" ;;
            user) export PGUSER="$value" ;;
            dbname) export PGDATABASE="$value" ;;
            password)
                password="$value"
                have_password=1
                ;;
            sslmode) export PGSSLMODE="$value" ;;
            sslrootcert) export PGSSLROOTCERT="$value" ;;
            sslcert) export PGSSLCERT="$value" ;;
            sslkey) export PGSSLKEY="$value" ;;
            connect_timeout) export PGCONNECT_TIMEOUT="$value" ;;
            application_name) export PGAPPNAME="$value" ;;
            options) export PGOPTIONS="$value" ;;
            target_session_attrs) export PGTARGETSESSIONATTRS="$value" ;;
            *)
                echo "ERROR: the database URI has parameter '$key', which libpq's tools cannot take (supported: host port user dbname password sslmode sslrootcert sslcert sslkey connect_timeout application_name options target_session_attrs)" >&2
                return 2
                ;;
            esac
        done
    fi
    if [ -z "${PGDATABASE:-}" ]; then
        echo "ERROR: the database URI names no database (postgresql://user:password@host:port/DATABASE)" >&2
        return 2
    fi
    export PGPASSFILE="$dir/pgpass"
    (
        umask 077
        : >"$PGPASSFILE"
        if [ "$have_password" = 1 ]; then
            # pgpass format: any host, port, database and user; ':' and '\' escaped.
            password="${password//\\/\\\\}"
            printf '*:*:*:*:%s\n' "${password//:/\\:}" >"$PGPASSFILE"
        fi
    )
}
