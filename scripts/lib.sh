#!/usr/bin/env bash
# Functions shared by scripts/*.sh and cicd/build-and-push.sh. Sourced, never run.
# Every command that changes something goes through `run` (or prints itself the same way), so
# --dry-run shows the whole plan and executes nothing.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Work from the repository root: kind resolves kind-config.yaml's relative hostPath (./logs)
# against the current directory.
CALLER_DIR="$PWD"
cd "$REPO_ROOT" || exit 1
DRY_RUN=0

# Secrets the chart values reference (chart/values.yaml); created once, kept across upgrades.
SECRET_FERNET=airflow-fernet-key
SECRET_API_KEY=airflow-api-secret-key
SECRET_JWT=airflow-jwt-secret
SECRET_POSTGRES=airflow-postgresql-credentials
SECRET_METADATA=airflow-metadata-connection
SECRET_ADMIN=airflow-admin-user
SECRET_CONNECTIONS=airflow-connections
SECRET_GIT=airflow-git-credentials
SECRET_GIT_SSH=airflow-git-ssh-key
# PROFILE=production: the external database's URI as given (METADATA_DB_URI), and the PgBouncer
# configuration and stats connection derived from it (chart/values-production.yaml names them).
SECRET_EXTERNAL_DB=airflow-metadata-db-external
SECRET_PGBOUNCER_CONFIG=airflow-pgbouncer-config
SECRET_PGBOUNCER_STATS=airflow-pgbouncer-stats
PGBOUNCER_PORT=6543 # the chart's ports.pgbouncer
# The uid and gid the Airflow pods run as (chart/values.yaml securityContexts.pod).
AIRFLOW_UID=50000
AIRFLOW_GID=0
# Where kind-config.yaml mounts ./logs and ./dags in the nodes.
NODE_LOGS_DIR=/var/local/airflow/logs
NODE_DAGS_DIR=/var/local/airflow/dags
# Image label recording the dependency hash (cicd/Dockerfile LABEL).
# shellcheck disable=SC2034 # read by scripts/upgrade-dags.sh
DEPS_LABEL=io.github.airflow-stackexchange.deps-sha256

# ---------------------------------------------------------------------------------------------
# Output
info() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# The command as it would be typed, arguments quoted where needed ("|" stands for a pipe). On
# stderr, like `set -x`, so functions that return a value on stdout can show their commands too.
show() {
    local arg line=""
    for arg in "$@"; do
        if [ "$arg" = "|" ]; then
            line+="| "
        else
            line+="$(printf '%q' "$arg") "
        fi
    done
    printf '+ %s\n' "${line% }" >&2
}

# Run a command that changes something; with --dry-run only print it.
run() {
    show "$@"
    [ "$DRY_RUN" = 1 ] && return 0
    "$@"
}

# A dry run runs read-only queries too, so its plan is what a real run would do (#17); only
# when the Kind cluster does not exist yet (NOTHING_EXISTS=1) is everything in it absent.
NOTHING_EXISTS=0

# Run a read-only query (also with --dry-run: a plan that depends on what exists).
query() {
    show "$@"
    [ "$NOTHING_EXISTS" = 1 ] && return 1
    "$@"
}

# Read-only query whose failure is an expected answer ("absent"): no output either way.
quiet_probe() {
    show "$@"
    [ "$NOTHING_EXISTS" = 1 ] && return 1
    "$@" >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# Arguments and configuration

# Parse the options every script accepts; leaves the rest in REST_ARGS.
parse_common_args() {
    REST_ARGS=()
    while [ $# -gt 0 ]; do
        case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --dry-run) DRY_RUN=1 ;;
        --env-file)
            [ $# -ge 2 ] || die "--env-file needs a path"
            case "$2" in
            /*) ENV_FILE="$2" ;;
            *) ENV_FILE="$CALLER_DIR/$2" ;;
            esac
            shift
            ;;
        *) REST_ARGS+=("$1") ;;
        esac
        shift
    done
}

# parse_tag_arg ARGS...: the --tag option (alias --ref) of the scripts that take one (sets TAG);
# nothing else.
# shellcheck disable=SC2034 # TAG is read by the calling script
parse_tag_arg() {
    TAG=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --tag | --ref)
            [ $# -ge 2 ] || die "$1 needs a value"
            TAG="$2"
            check_ref "$1" "$TAG"
            shift
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
}

# check_ref WHAT REF: a git tag, commit or branch name (also an image tag when it is a release).
check_ref() {
    [[ "$2" =~ ^[A-Za-z0-9_][A-Za-z0-9_./-]*$ ]] ||
        die "$1 must be a git tag, commit or branch (letters, digits, . _ / -), got '$2'"
}

# pin_release REF: --tag/--ref given: git-sync checks out REF. With install-airflow-2-ecr.sh the
# same tag names the image, so one tag pins both the image and the DAGs; rollback is installing
# the previous tag.
pin_release() {
    [ -n "$1" ] || return 0
    [ -n "$GIT_SYNC_REPO" ] || return 0
    note "git-sync ref: $1 (from the command line; GIT_SYNC_REF=$GIT_SYNC_REF is not used)"
    GIT_SYNC_REF="$1"
}

# versions.env, then the env file (default .env, see .env.example), then defaults; announces a
# dry run.
load_config() {
    set -a
    # shellcheck source-path=SCRIPTDIR source=../versions.env
    . "$REPO_ROOT/versions.env"
    # shellcheck source-path=SCRIPTDIR source=../cicd/image-digests.env
    . "$REPO_ROOT/cicd/image-digests.env"
    if [ -n "${ENV_FILE:-}" ] && [ ! -f "$ENV_FILE" ]; then
        die "env file $ENV_FILE not found (copy .env.example and edit it)"
    fi
    local env_file="${ENV_FILE:-$REPO_ROOT/.env}"
    if [ -f "$env_file" ]; then
        # shellcheck disable=SC1090
        . "$env_file"
    fi
    set +a
    PROFILE="${PROFILE:-kind}"
    CLUSTER_NAME="${CLUSTER_NAME:-airflow}"
    NAMESPACE="${NAMESPACE:-airflow}"
    HELM_RELEASE="${HELM_RELEASE:-airflow}"
    case "$PROFILE" in
    kind)
        # Always the Kind cluster's context: your current kubectl context is never used or changed.
        KUBE_CONTEXT="kind-$CLUSTER_NAME"
        PERSISTENCE="${PERSISTENCE:-true}"
        ;;
    production)
        # An existing cluster, named explicitly: never whatever kubectl points at right now.
        KUBE_CONTEXT="${KUBE_CONTEXT:-}"
        [ -n "$KUBE_CONTEXT" ] ||
            die "PROFILE=production installs onto an existing cluster: set KUBE_CONTEXT to its kubectl context (kubectl config get-contexts -o name)"
        PERSISTENCE="${PERSISTENCE:-false}"
        ;;
    *) die "PROFILE must be kind or production (got '$PROFILE')" ;;
    esac
    KUBECTL=(kubectl --context "$KUBE_CONTEXT")
    HELM=(helm --kube-context "$KUBE_CONTEXT")
    LOCAL_IMAGE_REPOSITORY="${LOCAL_IMAGE_REPOSITORY:-airflow-stackexchange}"
    AWS_REGION="${AWS_REGION:-us-east-1}"
    ECR_REPOSITORY="${ECR_REPOSITORY:-airflow-stackexchange}"
    ECR_REGISTRY="${ECR_REGISTRY:-}"
    DAGS_FROM_HOST="${DAGS_FROM_HOST:-false}"
    REMOTE_LOG_BUCKET="${REMOTE_LOG_BUCKET:-}"
    REMOTE_LOG_PREFIX="${REMOTE_LOG_PREFIX:-airflow/task-logs}"
    GIT_SYNC_REPO="${GIT_SYNC_REPO:-}"
    GIT_SYNC_SSH_KEY_FILE="${GIT_SYNC_SSH_KEY_FILE:-}"
    GIT_SYNC_KNOWN_HOSTS_FILE="${GIT_SYNC_KNOWN_HOSTS_FILE:-}"
    GIT_SYNC_BRANCH="${GIT_SYNC_BRANCH:-main}"
    # What git-sync checks out: a tag or commit pins the DAGs (a release); a branch follows it.
    GIT_SYNC_REF="${GIT_SYNC_REF:-$GIT_SYNC_BRANCH}"
    GIT_SYNC_SUBPATH="${GIT_SYNC_SUBPATH:-dags}"
    HELM_TIMEOUT="${HELM_TIMEOUT:-15m}"
    ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-10m}"
    INGRESS_HOST="${INGRESS_HOST:-}"
    if [ "$PROFILE" = production ] && [ -n "$INGRESS_HOST" ]; then
        AIRFLOW_URL="${AIRFLOW_URL:-https://$INGRESS_HOST}"
    else
        AIRFLOW_URL="${AIRFLOW_URL:-http://localhost:8080}"
    fi
    LOGS_HOST_DIR="$REPO_ROOT/logs" # kind-config.yaml extraMounts hostPath (./logs)
    local flag
    for flag in PERSISTENCE DAGS_FROM_HOST; do
        case "${!flag}" in
        true | false) ;;
        *) die "$flag must be true or false (got '${!flag}')" ;;
        esac
    done
    check_ref GIT_SYNC_REF "$GIT_SYNC_REF"
    check_git_sync_config
    [ "$DAGS_FROM_HOST" = false ] || [ -z "$GIT_SYNC_REPO" ] ||
        die "DAGS_FROM_HOST=true and GIT_SYNC_REPO both choose where the DAGs come from: set one of them"
    [ "$DRY_RUN" = 0 ] || info "Dry run: read-only queries run, every other command is only printed"
    [ "$PROFILE" = kind ] || info "Profile: production (context $KUBE_CONTEXT, namespace $NAMESPACE)"
}

# The production profile's settings (.env, see .env.example), checked before anything is
# installed: external database (METADATA_DB_URI or METADATA_DB_SECRET), Ingress, db clean.
check_production_config() {
    [ "$PROFILE" = production ] || return 0
    [ "$PERSISTENCE" = false ] ||
        die "PROFILE=production keeps task logs in S3: remove PERSISTENCE=true (the Kind hostPath volume) and set REMOTE_LOG_BUCKET"
    [ "$DAGS_FROM_HOST" = false ] ||
        die "DAGS_FROM_HOST=true mounts this checkout into Kind nodes: not with PROFILE=production (DAGs from the image or from GIT_SYNC_REPO at a tag)"
    INGRESS_CLASS="${INGRESS_CLASS:-nginx}"
    INGRESS_TLS_SECRET="${INGRESS_TLS_SECRET:-}"
    INGRESS_CONTROLLER_NAMESPACE="${INGRESS_CONTROLLER_NAMESPACE:-ingress-nginx}"
    [[ "$INGRESS_HOST" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] ||
        die "PROFILE=production serves the UI through an Ingress: set INGRESS_HOST to its host name, e.g. airflow.example.com (got '$INGRESS_HOST')"
    METADATA_DB_CIDR="${METADATA_DB_CIDR:-}"
    [[ "$METADATA_DB_CIDR" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] ||
        die "PROFILE=production lets only PgBouncer reach the external database: set METADATA_DB_CIDR to the database's address range, e.g. 10.0.32.0/20 (got '$METADATA_DB_CIDR')"
    DB_CLEAN_RETENTION_DAYS="${DB_CLEAN_RETENTION_DAYS:-90}"
    DB_CLEAN_SCHEDULE="${DB_CLEAN_SCHEDULE:-30 3 * * *}"
    [[ "$DB_CLEAN_RETENTION_DAYS" =~ ^[1-9][0-9]*$ ]] ||
        die "DB_CLEAN_RETENTION_DAYS must be a whole number of days (got '$DB_CLEAN_RETENTION_DAYS')"
    PGBOUNCER_POOL_SIZE="${PGBOUNCER_POOL_SIZE:-20}"
    PGBOUNCER_MAX_CLIENT_CONN="${PGBOUNCER_MAX_CLIENT_CONN:-200}"
    local number
    for number in PGBOUNCER_POOL_SIZE PGBOUNCER_MAX_CLIENT_CONN; do
        [[ "${!number}" =~ ^[1-9][0-9]*$ ]] || die "$number must be a positive whole number (got '${!number}')"
    done
    METADATA_DB_URI="${METADATA_DB_URI:-}"
    METADATA_DB_SECRET="${METADATA_DB_SECRET:-}"
    if [ -n "$METADATA_DB_URI" ] && [ -n "$METADATA_DB_SECRET" ]; then
        die "METADATA_DB_URI and METADATA_DB_SECRET are both set: give the database once (the URI the first time, then METADATA_DB_SECRET=$SECRET_EXTERNAL_DB)"
    fi
    if [ -z "$METADATA_DB_URI" ] && [ -z "$METADATA_DB_SECRET" ]; then
        die "PROFILE=production uses an external PostgreSQL: export METADATA_DB_URI='postgresql://USER:PASSWORD@HOST:5432/DATABASE?sslmode=require' (stored in Secret $SECRET_EXTERNAL_DB, never shown), or set METADATA_DB_SECRET to an existing Secret in namespace '$NAMESPACE' whose key 'connection' holds it. Nothing was installed."
    fi
    [ -z "$METADATA_DB_URI" ] || parse_db_uri "$METADATA_DB_URI" METADATA_DB_URI
}

# parse_db_uri URI WHERE: splits the external database URI into DB_USER, DB_PASSWORD (both as
# written, URL-encoded), DB_HOST, DB_PORT, DB_NAME and DB_SSLMODE. TLS is required. Errors name
# WHERE, never the value (it holds the password).
parse_db_uri() {
    local re='^postgres(ql)?(\+psycopg2)?://([^:@/?#]+):([^@/?#]+)@([A-Za-z0-9.-]+)(:([0-9]{1,5}))?/([A-Za-z0-9_.-]+)(\?(.*))?$'
    [[ "$1" =~ $re ]] ||
        die "$2 is not postgresql://USER:PASSWORD@HOST[:PORT]/DATABASE?sslmode=require (user and password required, special characters URL-encoded; the value is not shown)"
    DB_USER="${BASH_REMATCH[3]}"
    DB_PASSWORD="${BASH_REMATCH[4]}"
    DB_HOST="${BASH_REMATCH[5]}"
    DB_PORT="${BASH_REMATCH[7]:-5432}"
    DB_NAME="${BASH_REMATCH[8]}"
    local query="${BASH_REMATCH[10]}" param params=()
    DB_SSLMODE=""
    [[ "$DB_USER" =~ ^[A-Za-z0-9_.-]+$ ]] ||
        die "$2: the user name may hold only letters, digits, . _ - (PgBouncer's configuration names it)"
    IFS='&' read -r -a params <<<"$query"
    for param in "${params[@]+"${params[@]}"}"; do
        [[ "$param" != sslmode=* ]] || DB_SSLMODE="${param#sslmode=}"
    done
    case "$DB_SSLMODE" in
    require | verify-ca | verify-full) ;;
    "") die "$2 has no sslmode: the external database is reached over TLS only: append ?sslmode=require (or verify-full)" ;;
    *) die "$2 has sslmode=$DB_SSLMODE: TLS is required, use sslmode=require, verify-ca or verify-full" ;;
    esac
}

# Where task logs go: the hostPath volume (PERSISTENCE=true) or S3 (chart/values-remote-logging.yaml).
check_logs_config() {
    [ "$PERSISTENCE" = false ] || return 0
    [ -n "$REMOTE_LOG_BUCKET" ] ||
        die "PERSISTENCE=false keeps task logs in S3: set REMOTE_LOG_BUCKET (and optionally REMOTE_LOG_PREFIX) in .env, or PERSISTENCE=true for the hostPath volume"
    case "$REMOTE_LOG_BUCKET" in
    *[!a-z0-9.-]*) die "REMOTE_LOG_BUCKET must be a bucket name, not a URL (got '$REMOTE_LOG_BUCKET')" ;;
    esac
}

# git-sync settings: credentials never inside the URL (it is a Helm value, shown by `helm get
# values` and in every pod spec); SSH needs the key file and the server's known host keys.
check_git_sync_config() {
    [ -n "$GIT_SYNC_REPO" ] || return 0
    if [[ "$GIT_SYNC_REPO" =~ ^https?://[^/]*@ ]] || [[ "$GIT_SYNC_REPO" =~ ^[a-z+]+://[^/@]*:[^/@]*@ ]]; then
        die "GIT_SYNC_REPO contains credentials in the URL (user or token before '@'): remove them from the URL and set GIT_SYNC_USERNAME and GIT_SYNC_PASSWORD (HTTPS), or use an SSH URL with GIT_SYNC_SSH_KEY_FILE"
    fi
    if [ -n "$GIT_SYNC_SSH_KEY_FILE" ]; then
        [ -f "$GIT_SYNC_SSH_KEY_FILE" ] || die "GIT_SYNC_SSH_KEY_FILE $GIT_SYNC_SSH_KEY_FILE not found"
        [ -f "$GIT_SYNC_KNOWN_HOSTS_FILE" ] ||
            die "git-sync over SSH needs the server's host keys: GIT_SYNC_KNOWN_HOSTS_FILE=<file> (e.g. ssh-keyscan github.com > known_hosts)"
        [ -z "${GIT_SYNC_USERNAME:-}" ] ||
            die "GIT_SYNC_SSH_KEY_FILE and GIT_SYNC_USERNAME are both set: SSH or HTTPS credentials, not both"
        [[ ! "$GIT_SYNC_REPO" =~ ^https?:// ]] ||
            die "GIT_SYNC_SSH_KEY_FILE is set but GIT_SYNC_REPO is an HTTPS URL: use the SSH URL (git@host:org/repo.git)"
    fi
}

# ---------------------------------------------------------------------------------------------
# Preflight

tool_hint() {
    case "$1" in
    docker) echo "https://docs.docker.com/get-docker/" ;;
    kind) echo "https://kind.sigs.k8s.io/docs/user/quick-start/#installation (v0.27.0 or newer)" ;;
    kubectl) echo "https://kubernetes.io/docs/tasks/tools/" ;;
    helm) echo "https://helm.sh/docs/intro/install/ (Helm 3)" ;;
    aws) echo "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html" ;;
    curl) echo "your package manager (apt-get install curl)" ;;
    git) echo "your package manager (apt-get install git)" ;;
    *) echo "your package manager" ;;
    esac
}

tool_version() {
    case "$1" in
    docker) docker version --format '{{.Client.Version}}' 2>/dev/null ;;
    kind) kind version ;;
    kubectl) kubectl version --client 2>/dev/null | head -n1 ;;
    helm) helm version --short ;;
    aws) aws --version ;;
    curl) curl --version | head -n1 ;;
    git) git --version ;;
    esac
}

# Every tool present, with its version printed; one clear message per missing tool.
require_tools() {
    local tool version missing=0
    info "Preflight: $*"
    for tool in "$@"; do
        if command -v "$tool" >/dev/null 2>&1; then
            version="$(tool_version "$tool" 2>/dev/null || true)"
            note "$tool: ${version:-version unknown}"
        else
            printf 'ERROR: %s not found on PATH. Install it: %s\n' "$tool" "$(tool_hint "$tool")" >&2
            missing=1
        fi
    done
    [ "$missing" = 0 ] || exit 1
    if [[ " $* " == *" docker "* ]] && ! docker info >/dev/null 2>&1; then
        die "the Docker daemon is not reachable: start Docker (Docker Desktop, or 'sudo systemctl start docker') and retry"
    fi
}

# Read-only, also with --dry-run: a dry run's plan starts from what exists.
cluster_exists() {
    show kind get clusters
    kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"
}

# The cluster to work on: the Kind cluster (kind profile) or KUBE_CONTEXT (production).
require_cluster() {
    if [ "$PROFILE" = production ]; then
        require_context
        return 0
    fi
    cluster_exists ||
        die "Kind cluster '$CLUSTER_NAME' not found: run scripts/install-airflow.sh (or install-airflow-2-ecr.sh) first"
}

# PROFILE=production: the existing cluster's context must be in your kubeconfig.
require_context() {
    show kubectl config get-contexts -o name
    kubectl config get-contexts -o name 2>/dev/null | grep -qx -- "$KUBE_CONTEXT" ||
        die "kubectl context '$KUBE_CONTEXT' (KUBE_CONTEXT) not found in your kubeconfig: see 'kubectl config get-contexts'"
}

require_release() {
    quiet_probe "${HELM[@]}" status "$HELM_RELEASE" --namespace "$NAMESPACE" ||
        die "Helm release '$HELM_RELEASE' not found in namespace '$NAMESPACE': run scripts/install-airflow.sh first"
}

# ---------------------------------------------------------------------------------------------
# Cluster, namespace, secrets, volume

# Create the Kind cluster unless it exists; an existing cluster is never deleted or changed.
ensure_cluster() {
    if [ "$PROFILE" = production ]; then
        require_context
        info "Existing cluster: context $KUBE_CONTEXT (PROFILE=production creates no cluster)"
    elif cluster_exists; then
        info "Kind cluster '$CLUSTER_NAME' exists: using it"
    else
        # nothing inside a cluster that does not exist yet: the dry run's queries stop here
        [ "$DRY_RUN" = 0 ] || NOTHING_EXISTS=1
        info "Creating Kind cluster '$CLUSTER_NAME' (kind-config.yaml)"
        # kind-config.yaml mounts ./logs (relative to the repository root) into the nodes.
        run mkdir -p "$LOGS_HOST_DIR"
        run chmod 0770 "$LOGS_HOST_DIR"
        run kind create cluster --name "$CLUSTER_NAME" --config "$REPO_ROOT/kind-config.yaml" --wait 5m
    fi
}

# The namespace, labelled to enforce Pod Security "restricted" (and warn/audit against it), also
# when it existed before.
ensure_namespace() {
    if quiet_probe "${KUBECTL[@]}" get namespace "$NAMESPACE"; then
        info "Namespace '$NAMESPACE' exists"
    else
        run "${KUBECTL[@]}" create namespace "$NAMESPACE"
    fi
    run "${KUBECTL[@]}" label namespace "$NAMESPACE" --overwrite \
        pod-security.kubernetes.io/enforce=restricted \
        pod-security.kubernetes.io/warn=restricted \
        pod-security.kubernetes.io/audit=restricted
}

secret_exists() { quiet_probe "${KUBECTL[@]}" --namespace "$NAMESPACE" get secret "$1"; }

# One decoded value of an existing Secret.
secret_value() {
    "${KUBECTL[@]}" --namespace "$NAMESPACE" get secret "$1" -o "jsonpath={.data.$2}" | base64 -d
}

# Random alphanumeric string of length $1 (safe in URLs and connection strings).
random_token() {
    local raw
    raw="$(head -c 96 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
    printf '%s' "${raw:0:$1}"
}

# A Fernet key: 32 random bytes, URL-safe base64.
fernet_key() { head -c 32 /dev/urandom | base64 | tr '+/' '-_'; }

# Private directory (0700, files 0600, removed on exit) for secret material and the generated
# values file: secret values never appear on a command line or in output.
private_dir() {
    if [ -z "${PRIVATE_TMP:-}" ]; then
        PRIVATE_TMP="$(mktemp -d)"
        chmod 700 "$PRIVATE_TMP"
        trap 'rm -rf "$PRIVATE_TMP"' EXIT
    fi
}

# Write value $2 for key $1 (printf is a builtin: no process sees it) and print the --from-file
# argument for it.
secret_file_arg() {
    (
        umask 077
        printf '%s' "$2" >"$PRIVATE_TMP/secret-$1"
    )
    printf -- '--from-file=%s=%s' "$1" "$PRIVATE_TMP/secret-$1"
}

# create_secret NAME KEY VALUE [KEY VALUE...]: create once; an existing Secret is kept.
create_secret() {
    if secret_exists "$1"; then
        note "Secret $1 exists: kept"
    else
        new_secret "$@"
    fi
}

# secret_args KEY VALUE...: kubectl --from-file arguments (values in private files) in SECRET_ARGS.
secret_args() {
    SECRET_ARGS=()
    private_dir
    while [ $# -gt 0 ]; do
        SECRET_ARGS+=("$(secret_file_arg "$1" "$2")")
        shift 2
    done
}

new_secret() {
    local name="$1"
    shift
    secret_args "$@"
    run "${KUBECTL[@]}" --namespace "$NAMESPACE" create secret generic "$name" "${SECRET_ARGS[@]}"
}

# apply_secret NAME KEY VALUE...: values you supply (connections, git credentials) are applied on
# every run, so the Secret follows your environment.
apply_secret() {
    local name="$1"
    shift
    secret_args "$@"
    show "${KUBECTL[@]}" --namespace "$NAMESPACE" create secret generic "$name" \
        "${SECRET_ARGS[@]}" --dry-run=client -o yaml "|" "${KUBECTL[@]}" apply -f -
    [ "$DRY_RUN" = 1 ] && return 0
    "${KUBECTL[@]}" --namespace "$NAMESPACE" create secret generic "$name" "${SECRET_ARGS[@]}" --dry-run=client -o yaml |
        "${KUBECTL[@]}" apply -f -
}

ensure_secrets() {
    info "Secrets in namespace '$NAMESPACE' (generated once, kept across upgrades)"
    create_secret "$SECRET_FERNET" fernet-key "$(fernet_key)"
    create_secret "$SECRET_API_KEY" api-secret-key "$(random_token 48)"
    create_secret "$SECRET_JWT" jwt-secret "$(random_token 48)"
    create_secret "$SECRET_ADMIN" password "$(random_token 24)"
    if [ "$PROFILE" = production ]; then
        ensure_external_db_secrets
    else
        ensure_postgres_secrets
    fi
    ensure_connections_secret
    ensure_git_secrets
}

# Kind: the in-cluster Postgres' credentials and Airflow's URI built from them.
ensure_postgres_secrets() {
    # The superuser (postgres-password) stays in this Secret, read only by the Postgres pod;
    # Airflow connects as the database owner `airflow` (password).
    create_secret "$SECRET_POSTGRES" postgres-password "$(random_token 32)" password "$(random_token 32)"
    if [ "$DRY_RUN" = 0 ] && [ -z "$(secret_value "$SECRET_POSTGRES" password)" ]; then
        die "Secret $SECRET_POSTGRES has no 'password' key: it was created by an older install whose Airflow used the Postgres superuser. Remove the install (scripts/complete-cleanup.sh) and install again"
    fi
    if ! secret_exists "$SECRET_METADATA"; then
        # Built from the Postgres Secret, so the two always agree (also after a half-done run).
        local password="<password>"
        [ "$DRY_RUN" = 1 ] || password="$(secret_value "$SECRET_POSTGRES" password)"
        new_secret "$SECRET_METADATA" connection \
            "postgresql://airflow:${password}@${HELM_RELEASE}-postgresql.${NAMESPACE}:5432/airflow?sslmode=disable"
    else
        note "Secret $SECRET_METADATA exists: kept"
    fi
}

ensure_git_secrets() {
    if [ -n "$GIT_SYNC_REPO" ] && [ -n "${GIT_SYNC_USERNAME:-}" ]; then
        # chart 1.18.0 reads both the git-sync v3 and v4 variable names
        apply_secret "$SECRET_GIT" \
            GIT_SYNC_USERNAME "$GIT_SYNC_USERNAME" GIT_SYNC_PASSWORD "${GIT_SYNC_PASSWORD:-}" \
            GITSYNC_USERNAME "$GIT_SYNC_USERNAME" GITSYNC_PASSWORD "${GIT_SYNC_PASSWORD:-}"
    fi
    if [ -n "$GIT_SYNC_REPO" ] && [ -n "$GIT_SYNC_SSH_KEY_FILE" ]; then
        # the key the chart mounts for git-sync (dags.gitSync.sshKeySecret, key gitSshKey)
        # (ssh refuses a key without its final newline, which $(...) strips)
        apply_secret "$SECRET_GIT_SSH" gitSshKey "$(cat "$GIT_SYNC_SSH_KEY_FILE")"$'\n'
    fi
}

# PROFILE=production, read-only and before anything is installed: the external database URI
# from METADATA_DB_SECRET (key connection) when METADATA_DB_URI is not given; checked like it.
load_external_db() {
    [ "$PROFILE" = production ] && [ -n "$METADATA_DB_SECRET" ] || return 0
    local uri=""
    show "${KUBECTL[@]}" --namespace "$NAMESPACE" get secret "$METADATA_DB_SECRET" \
        -o 'jsonpath={.data.connection}' "|" base64 -d
    uri="$(secret_value "$METADATA_DB_SECRET" connection 2>/dev/null)" || uri=""
    [ -n "$uri" ] ||
        die "METADATA_DB_SECRET: Secret '$METADATA_DB_SECRET' with key 'connection' not found in namespace '$NAMESPACE' (context $KUBE_CONTEXT): create it, or give METADATA_DB_URI once"
    parse_db_uri "$uri" "Secret $METADATA_DB_SECRET (key connection)"
}

# PROFILE=production: Airflow reaches the external database through the chart's PgBouncer. From
# the external URI (never shown, never on a command line): Airflow's URI to PgBouncer, PgBouncer's
# configuration (TLS to the database with the URI's sslmode) and its stats connection. Applied
# on every run, so they follow the URI.
ensure_external_db_secrets() {
    [ -z "$METADATA_DB_URI" ] || apply_secret "$SECRET_EXTERNAL_DB" connection "$METADATA_DB_URI"
    local alias="$HELM_RELEASE-metadata" userinfo="$DB_USER:$DB_PASSWORD"
    apply_secret "$SECRET_METADATA" connection \
        "postgresql://$userinfo@$HELM_RELEASE-pgbouncer.$NAMESPACE:$PGBOUNCER_PORT/$alias?sslmode=disable"
    apply_secret "$SECRET_PGBOUNCER_CONFIG" pgbouncer.ini "$(pgbouncer_ini "$alias")" \
        users.txt "$(pgbouncer_users)"
    apply_secret "$SECRET_PGBOUNCER_STATS" connection \
        "postgresql://$userinfo@127.0.0.1:$PGBOUNCER_PORT/pgbouncer?sslmode=disable"
}

# The chart's own pgbouncer.ini (templates/_helpers.yaml pgbouncer_config) for one database, with
# TLS to the server as the URI's sslmode (verify-*: against the image's CA bundle).
pgbouncer_ini() {
    local ca=""
    case "$DB_SSLMODE" in
    verify-*) ca="server_tls_ca_file = /etc/ssl/certs/ca-certificates.crt" ;;
    esac
    cat <<EOF
[databases]
$1 = host=$DB_HOST dbname=$DB_NAME port=$DB_PORT pool_size=$PGBOUNCER_POOL_SIZE

[pgbouncer]
pool_mode = transaction
listen_port = $PGBOUNCER_PORT
listen_addr = *
auth_type = scram-sha-256
auth_file = /etc/pgbouncer/users.txt
stats_users = $DB_USER
ignore_startup_parameters = extra_float_digits
max_client_conn = $PGBOUNCER_MAX_CLIENT_CONN
verbose = 0
log_disconnections = 0
log_connections = 0

server_tls_sslmode = $DB_SSLMODE
server_tls_ciphers = normal
$ca
EOF
}

# PgBouncer's auth file: "user" "password", decoded from the URI, a double quote doubled.
pgbouncer_users() {
    local password
    password="$(url_decode "$DB_PASSWORD")"
    printf '"%s" "%s"\n' "$DB_USER" "${password//\"/\"\"}"
}

# %XX sequences decoded (a backslash stays a backslash).
url_decode() {
    local value="${1//\\/\\\\}"
    printf '%b' "${value//%/\\x}"
}

# aws_conn and databricks_conn as AIRFLOW_CONN_* from your environment (or the env file).
ensure_connections_secret() {
    local args=() var
    for var in AIRFLOW_CONN_AWS_CONN AIRFLOW_CONN_DATABRICKS_CONN; do
        if [ -n "${!var:-}" ]; then
            args+=("$var" "${!var}")
        else
            warn "$var is not set: the DAGs cannot reach that system until you set it and re-run (see .env.example)"
        fi
    done
    if [ ${#args[@]} -gt 0 ]; then
        apply_secret "$SECRET_CONNECTIONS" "${args[@]}"
    elif ! secret_exists "$SECRET_CONNECTIONS"; then
        run "${KUBECTL[@]}" --namespace "$NAMESPACE" create secret generic "$SECRET_CONNECTIONS"
    else
        note "Secret $SECRET_CONNECTIONS exists and no AIRFLOW_CONN_* set: kept"
    fi
}

# ensure_host_volume NAME MANIFEST: a static hostPath PV + PVC (chart/*-persistent-volume.yaml);
# apply is idempotent.
ensure_host_volume() {
    local pv="airflow-$1-pv" phase=""
    show "${KUBECTL[@]}" get persistentvolume "$pv" -o 'jsonpath={.status.phase}'
    [ "$NOTHING_EXISTS" = 1 ] ||
        phase="$("${KUBECTL[@]}" get persistentvolume "$pv" -o 'jsonpath={.status.phase}' 2>/dev/null || true)"
    if [ "$phase" = Released ]; then
        # Its old claim is gone (namespace deleted by hand): free it for the new claim, keep the data.
        run "${KUBECTL[@]}" patch persistentvolume "$pv" --type json \
            -p '[{"op": "remove", "path": "/spec/claimRef"}]'
    fi
    run "${KUBECTL[@]}" --namespace "$NAMESPACE" apply -f "$REPO_ROOT/chart/$2"
}

# Task logs on the host (PERSISTENCE=true). The directory belongs to the pods' uid and group
# (50000:0, mode 0770), set from inside a node (root there), so nothing is world-writable.
ensure_logs_volume() {
    [ "$PERSISTENCE" = true ] || return 0
    info "Task logs volume: PV airflow-logs-pv -> PVC airflow-logs-pvc (host: $LOGS_HOST_DIR)"
    run docker exec "$CLUSTER_NAME-control-plane" \
        sh -c "chown $AIRFLOW_UID:$AIRFLOW_GID $NODE_LOGS_DIR && chmod 0770 $NODE_LOGS_DIR"
    ensure_host_volume logs logs-persistent-volume.yaml
}

# The repository's dags/ in every pod (DAGS_FROM_HOST=true), through kind-config.yaml's mount.
ensure_dags_volume() {
    [ "$DAGS_FROM_HOST" = true ] || return 0
    info "DAGs from the host: PV airflow-dags-pv -> PVC airflow-dags-pvc (host: $REPO_ROOT/dags)"
    quiet_probe docker exec "$CLUSTER_NAME-control-plane" test -d "$NODE_DAGS_DIR" || [ "$NOTHING_EXISTS" = 1 ] ||
        die "Kind cluster '$CLUSTER_NAME' was created without the ./dags mount (older kind-config.yaml): recreate it (scripts/complete-cleanup.sh, then install), or set DAGS_FROM_HOST=false"
    ensure_host_volume dags dags-persistent-volume.yaml
}

# ---------------------------------------------------------------------------------------------
# Image

# Where a build comes from: the release tag in CI (GITHUB_REF_TYPE=tag), else the branch
# (GITHUB_REF_NAME in CI, the checkout's branch here), "detached", or "local" outside git.
image_source() {
    local branch
    if [ -n "${GITHUB_REF_NAME:-}" ]; then
        branch="$GITHUB_REF_NAME"
    elif branch="$(git -C "$REPO_ROOT" symbolic-ref --quiet --short HEAD 2>/dev/null)"; then
        :
    elif git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        branch=detached
    else
        branch=local
    fi
    branch="$(printf '%s' "$branch" | tr -c 'A-Za-z0-9_.-' '-')"
    printf '%s' "${branch:0:40}"
}

# Unique per build and says where it came from: a release tag as is (v1.2.0), else
# <branch>-<UTC time>-<commit> (+ -dirty for uncommitted changes), e.g.
# main-20250101T120000Z-0123456789ab. Never "latest".
new_image_tag() {
    if [ "${GITHUB_REF_TYPE:-}" = tag ]; then
        printf '%s' "$GITHUB_REF_NAME"
        return 0
    fi
    local sha=nogit dirty=""
    if git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        sha="$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo nocommit)"
        [ -z "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null)" ] || dirty="-dirty"
    fi
    printf '%s-%s-%s%s' "$(image_source)" "$(date -u +%Y%m%dT%H%M%SZ)" "$sha" "$dirty"
}

# What the image's installed packages depend on: a change here needs a new image; a DAG change
# does not when the DAGs come from the host (DAGS_FROM_HOST=true). Recorded as image label.
deps_hash() {
    cat "$REPO_ROOT/requirements.txt" "$REPO_ROOT/constraints.txt" "$REPO_ROOT/cicd/requirements.lock" \
        "$REPO_ROOT/cicd/Dockerfile" "$REPO_ROOT/versions.env" | sha256sum | cut -d' ' -f1
}

# The Postgres image's digest pin (chart/values.yaml postgresql.image.digest; the Kind profile).
postgres_digest() {
    sed -n '/^postgresql:/,/^[a-z]/s/^    digest: *"\{0,1\}\([^" ]*\)"\{0,1\}.*/\1/p' "$REPO_ROOT/chart/values.yaml"
}

# A registry build (cicd/build-and-push.sh: what production installs) needs every image pin; a
# local Kind build only warns.
require_pinned_digests() {
    local missing=()
    [ -n "${AIRFLOW_BASE_DIGEST:-}" ] || missing+=("AIRFLOW_BASE_DIGEST in cicd/image-digests.env")
    [ -n "$(postgres_digest)" ] || missing+=("postgresql.image.digest in chart/values.yaml")
    [ ${#missing[@]} -eq 0 ] ||
        die "image pins are empty: ${missing[*]}. A registry build needs them: run 'make k8s-refresh-digests' (scripts/refresh-digests.sh; needs crane or docker and registry access), review 'git diff', commit, and build again"
}

# The official image the build starts from: tag from versions.env, digest from
# cicd/image-digests.env.
base_image() {
    printf 'apache/airflow:%s-python%s' "$AIRFLOW_VERSION" "$PYTHON_VERSION"
    [ -z "${AIRFLOW_BASE_DIGEST:-}" ] || printf '@%s' "$AIRFLOW_BASE_DIGEST"
}

# build_image REF: cicd/Dockerfile, versions from versions.env, OCI labels from git.
build_image() {
    local revision
    revision="$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    info "Building $1"
    [ -n "${AIRFLOW_BASE_DIGEST:-}" ] ||
        warn "the base image is pinned by tag only: run 'make k8s-refresh-digests' to pin its digest (a registry build refuses to run without it)"
    run docker build --file "$REPO_ROOT/cicd/Dockerfile" \
        --build-arg "BASE_IMAGE=$(base_image)" \
        --build-arg "AIRFLOW_VERSION=$AIRFLOW_VERSION" \
        --build-arg "PYTHON_VERSION=$PYTHON_VERSION" \
        --build-arg "GIT_REVISION=$revision" \
        --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --build-arg "DEPS_HASH=$(deps_hash)" \
        --tag "$1" "$REPO_ROOT"
}

load_image() {
    info "Loading $1 into the Kind nodes"
    run kind load docker-image "$1" --name "$CLUSTER_NAME"
}

# ---------------------------------------------------------------------------------------------
# AWS / ECR

# Sets AWS_ACCOUNT and ECR_REGISTRY (unless given) from the caller's identity.
aws_identity() {
    info "AWS identity"
    show aws sts get-caller-identity --query Account --output text
    if ! AWS_ACCOUNT="$(aws sts get-caller-identity --query Account --output text)"; then
        die "no usable AWS credentials: run 'aws configure' or 'aws sso login', or export AWS_PROFILE, then retry"
    fi
    ECR_REGISTRY="${ECR_REGISTRY:-$AWS_ACCOUNT.dkr.ecr.$AWS_REGION.amazonaws.com}"
    note "account $AWS_ACCOUNT, registry $ECR_REGISTRY"
}

ecr_login() {
    info "Logging in to $ECR_REGISTRY"
    show aws ecr get-login-password --region "$AWS_REGION" "|" \
        docker login --username AWS --password-stdin "$ECR_REGISTRY"
    [ "$DRY_RUN" = 1 ] && return 0
    aws ecr get-login-password --region "$AWS_REGION" |
        docker login --username AWS --password-stdin "$ECR_REGISTRY" >/dev/null
}

ecr_tag_exists() {
    show aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
        --image-ids "imageTag=$1"
    aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
        --image-ids "imageTag=$1" >/dev/null 2>&1
}

# The newest image built from main (tag main-<time>-<commit>, by imagePushedAt), never a
# branch's or an uncommitted (-dirty) build.
ecr_newest_tag() {
    local main="imageTags[?starts_with(@, 'main-') && !ends_with(@, '-dirty')]"
    local query="sort_by(imageDetails[?$main], &imagePushedAt)[-1].$main | [0]"
    show aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
        --query "$query" --output text
    aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
        --query "$query" --output text
}

# ---------------------------------------------------------------------------------------------
# Helm release

# yaml_str VALUE: VALUE as a YAML double-quoted scalar (JSON string escapes), so a setting is
# always one literal string: `a,images.airflow.tag=evil` stays that text (#17).
yaml_str() {
    local value="$1" out="" i char
    value="${value//\\/\\\\}"
    value="${value//\"/\\\"}"
    value="${value//$'\n'/\\n}"
    value="${value//$'\t'/\\t}"
    value="${value//$'\r'/\\r}"
    if [[ "$value" == *[[:cntrl:]]* ]]; then
        for ((i = 0; i < ${#value}; i++)); do
            char="${value:i:1}"
            [[ "$char" != [[:cntrl:]] ]] || printf -v char '\\u%04x' "'$char"
            out+="$char"
        done
        value="$out"
    fi
    printf '"%s"' "$value"
}

# write_settings_values REPOSITORY TAG: the one values file for what .env and the options set
# (image, logs bucket, git-sync, pipeline env, production's Ingress and database range), every
# string quoted by yaml_str, in the private directory (0600, removed on exit). Sets
# SETTINGS_VALUES. Read by both releases, like the other values files.
write_settings_values() {
    private_dir
    SETTINGS_VALUES="$PRIVATE_TMP/settings.yaml"
    (
        umask 077
        settings_yaml "$@" >"$SETTINGS_VALUES"
    )
    if [ "$DRY_RUN" = 1 ]; then
        note "settings values (generated, passed with --values):"
        sed 's/^/      /' "$SETTINGS_VALUES"
    fi
}

settings_yaml() {
    printf 'images:\n  airflow:\n    repository: %s\n    tag: %s\n' "$(yaml_str "$1")" "$(yaml_str "$2")"
    if [ "$PERSISTENCE" = false ]; then
        printf 'config:\n  logging:\n    remote_base_log_folder: %s\n' \
            "$(yaml_str "s3://$REMOTE_LOG_BUCKET/${REMOTE_LOG_PREFIX%/}")"
    fi
    if [ -n "$GIT_SYNC_REPO" ]; then
        printf 'dags:\n  gitSync:\n    enabled: true\n'
        printf '    %s: %s\n' repo "$(yaml_str "$GIT_SYNC_REPO")" branch "$(yaml_str "$GIT_SYNC_BRANCH")" \
            ref "$(yaml_str "$GIT_SYNC_REF")" subPath "$(yaml_str "$GIT_SYNC_SUBPATH")"
        [ -z "${GIT_SYNC_USERNAME:-}" ] || printf '    credentialsSecret: %s\n' "$(yaml_str "$SECRET_GIT")"
        if [ -n "$GIT_SYNC_SSH_KEY_FILE" ]; then
            printf '    sshKeySecret: %s\n    knownHosts: %s\n' "$(yaml_str "$SECRET_GIT_SSH")" \
                "$(yaml_str "$(cat "$GIT_SYNC_KNOWN_HOSTS_FILE")"$'\n')"
        fi
    fi
    # Pipeline settings that must be identical in every component and task pod (asset URIs; the
    # ingest pod's size, read where the DAG is parsed: dags/stackexchange/pod_resources.py).
    local var env=""
    for var in STACKEXCHANGE_BUCKET STACKEXCHANGE_PREFIX DATABRICKS_JOB_ID \
        STACKEXCHANGE_INGEST_CPU STACKEXCHANGE_INGEST_MEMORY \
        STACKEXCHANGE_INGEST_EPHEMERAL_STORAGE STACKEXCHANGE_INGEST_TMP_SIZE; do
        [ -n "${!var:-}" ] || continue
        env+="$(printf '  - name: %s\n    value: %s' "$var" "$(yaml_str "${!var}")")"$'\n'
    done
    [ -z "$env" ] || printf 'env:\n%s' "$env"
    printf 'platform:\n  airflowRelease: %s\n' "$(yaml_str "$HELM_RELEASE")"
    [ "$PROFILE" = production ] || return 0
    printf '  dbClean:\n    schedule: %s\n    retentionDays: %s\n' \
        "$(yaml_str "$DB_CLEAN_SCHEDULE")" "$DB_CLEAN_RETENTION_DAYS"
    printf '  externalDatabase:\n    cidr: %s\n    port: %s\n' "$(yaml_str "$METADATA_DB_CIDR")" "$DB_PORT"
    # The scheduled metadata backup (chart/platform backup-cronjob.yaml) when a target is set.
    if [ -n "${BACKUP_S3_PREFIX:-}" ]; then
        printf 'backup:\n  enabled: true\n  s3Prefix: %s\n' "$(yaml_str "$BACKUP_S3_PREFIX")"
        printf '  databaseSecret:\n    name: %s\n    key: connection\n' \
            "$(yaml_str "${METADATA_DB_SECRET:-$SECRET_EXTERNAL_DB}")"
    fi
    printf 'ingress:\n  apiServer:\n    enabled: true\n    ingressClassName: %s\n' "$(yaml_str "$INGRESS_CLASS")"
    printf '    hosts:\n      - name: %s\n' "$(yaml_str "$INGRESS_HOST")"
    if [ -n "$INGRESS_TLS_SECRET" ]; then
        printf '        tls:\n          enabled: true\n          secretName: %s\n' "$(yaml_str "$INGRESS_TLS_SECRET")"
    fi
    # The API server admits the Airflow pods and the ingress controller's namespace.
    printf 'apiServer:\n  networkPolicy:\n    ingress:\n      from:\n'
    printf '        - podSelector:\n            matchLabels:\n              tier: airflow\n'
    printf '        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: %s\n' \
        "$(yaml_str "$INGRESS_CONTROLLER_NAMESPACE")"
    printf '      ports:\n        - port: "{{ .Values.ports.apiServer }}"\n'
}

# The values files, in order: base, metrics (statsd mapping), logs (hostPath volume or S3),
# Kind's DAGs mount, the production profile, the generated settings. One list for both releases
# and every script.
values_args() {
    VALUES_ARGS=(--values "$REPO_ROOT/chart/values.yaml" --values "$REPO_ROOT/chart/values-metrics.yaml")
    if [ "$PERSISTENCE" = true ]; then
        VALUES_ARGS+=(--values "$REPO_ROOT/chart/values-override-with-persistence.yaml")
    else
        VALUES_ARGS+=(--values "$REPO_ROOT/chart/values-remote-logging.yaml")
    fi
    [ "$DAGS_FROM_HOST" = false ] || VALUES_ARGS+=(--values "$REPO_ROOT/chart/values-dags-from-host.yaml")
    [ "$PROFILE" = kind ] || VALUES_ARGS+=(--values "$REPO_ROOT/chart/values-production.yaml")
    VALUES_ARGS+=(--values "$SETTINGS_VALUES")
}

# helm_deploy REPOSITORY TAG: install or upgrade both releases with the values files (no
# --reuse-values), so every run states the whole configuration: the Airflow chart, then the
# repository's own chart (chart/platform: NetworkPolicies, and in production the triggerer's
# PodDisruptionBudget and the db clean CronJob), which reads the same values files.
helm_deploy() {
    write_settings_values "$1" "$2"
    values_args
    # No --wait: the chart's migration and create-user jobs are post-install/upgrade hooks and
    # the deployments wait for the migration; Helm blocks until those hook jobs complete (or the
    # timeout), then wait_rollouts waits for every workload.
    info "Helm release '$HELM_RELEASE': chart airflow $AIRFLOW_CHART_VERSION, image $1:$2 (profile $PROFILE)"
    note "Helm waits for the database migration and user-creation jobs (timeout $HELM_TIMEOUT)"
    run "${HELM[@]}" upgrade --install "$HELM_RELEASE" airflow \
        --repo https://airflow.apache.org --version "$AIRFLOW_CHART_VERSION" \
        --namespace "$NAMESPACE" "${VALUES_ARGS[@]}" --timeout "$HELM_TIMEOUT"
    # After the Airflow release: an older install's NetworkPolicies (then in the Airflow release)
    # are gone before this release creates them.
    info "Helm release '$HELM_RELEASE-platform': chart/platform (the repository's own objects)"
    run "${HELM[@]}" upgrade --install "$HELM_RELEASE-platform" "$REPO_ROOT/chart/platform" \
        --namespace "$NAMESPACE" "${VALUES_ARGS[@]}" --timeout "$HELM_TIMEOUT"
}

# Wait for every Deployment and StatefulSet in the namespace to finish rolling out.
wait_rollouts() {
    local workloads workload
    info "Waiting for rollouts (timeout $ROLLOUT_TIMEOUT each)"
    show "${KUBECTL[@]}" --namespace "$NAMESPACE" get deployments,statefulsets -o name
    if [ "$DRY_RUN" = 1 ]; then
        show "${KUBECTL[@]}" --namespace "$NAMESPACE" rollout status "<each workload>" --timeout "$ROLLOUT_TIMEOUT"
        return 0
    fi
    workloads="$("${KUBECTL[@]}" --namespace "$NAMESPACE" get deployments,statefulsets -o name)"
    [ -n "$workloads" ] || die "no Deployments or StatefulSets in namespace '$NAMESPACE' after the Helm release"
    for workload in $workloads; do
        run "${KUBECTL[@]}" --namespace "$NAMESPACE" rollout status "$workload" --timeout "$ROLLOUT_TIMEOUT" ||
            die "$workload did not become ready in $ROLLOUT_TIMEOUT: see 'kubectl --context $KUBE_CONTEXT -n $NAMESPACE describe $workload' and scripts/check-airflow-status.sh"
    done
}

print_access() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "Dry run finished: only read-only queries ran; nothing was changed."
        return 0
    fi
    if [ "$PROFILE" = production ]; then
        cat <<EOF

Airflow is up: https://$INGRESS_HOST (Ingress class $INGRESS_CLASS)
  user:     admin
  password: kubectl --context $KUBE_CONTEXT -n $NAMESPACE get secret $SECRET_ADMIN -o jsonpath='{.data.password}' | base64 -d; echo
Health: scripts/check-airflow-status.sh (make k8s-status); rollback: install the previous tag (README "Production")
EOF
        return 0
    fi
    cat <<EOF

Airflow is up: $AIRFLOW_URL
  user:     admin
  password: kubectl --context $KUBE_CONTEXT -n $NAMESPACE get secret $SECRET_ADMIN -o jsonpath='{.data.password}' | base64 -d; echo
Next: edit dags/, then scripts/upgrade-dags.sh (make k8s-upgrade-dags); health: scripts/check-airflow-status.sh (make k8s-status)
EOF
}
