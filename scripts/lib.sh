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

# Run a read-only query; with --dry-run print it and report failure (nothing assumed to exist).
probe() {
    show "$@"
    [ "$DRY_RUN" = 1 ] && return 1
    "$@"
}

# Read-only query whose failure is an expected answer ("absent"): no output either way.
quiet_probe() {
    show "$@"
    [ "$DRY_RUN" = 1 ] && return 1
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

# parse_tag_arg ARGS...: the --tag option of the scripts that take one (sets TAG); nothing else.
# shellcheck disable=SC2034 # TAG is read by the calling script
parse_tag_arg() {
    TAG=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --tag)
            [ $# -ge 2 ] || die "--tag needs a value"
            TAG="$2"
            shift
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
}

# versions.env, then the env file (default .env, see .env.example), then defaults; announces a
# dry run.
load_config() {
    set -a
    # shellcheck source-path=SCRIPTDIR source=../versions.env
    . "$REPO_ROOT/versions.env"
    if [ -n "${ENV_FILE:-}" ] && [ ! -f "$ENV_FILE" ]; then
        die "env file $ENV_FILE not found (copy .env.example and edit it)"
    fi
    local env_file="${ENV_FILE:-$REPO_ROOT/.env}"
    if [ -f "$env_file" ]; then
        # shellcheck disable=SC1090
        . "$env_file"
    fi
    set +a
    CLUSTER_NAME="${CLUSTER_NAME:-airflow}"
    NAMESPACE="${NAMESPACE:-airflow}"
    HELM_RELEASE="${HELM_RELEASE:-airflow}"
    KUBE_CONTEXT="kind-$CLUSTER_NAME"
    # Always the Kind cluster's context: your current kubectl context is never used or changed.
    KUBECTL=(kubectl --context "$KUBE_CONTEXT")
    HELM=(helm --kube-context "$KUBE_CONTEXT")
    LOCAL_IMAGE_REPOSITORY="${LOCAL_IMAGE_REPOSITORY:-airflow-stackexchange}"
    AWS_REGION="${AWS_REGION:-us-east-1}"
    ECR_REPOSITORY="${ECR_REPOSITORY:-airflow-stackexchange}"
    ECR_REGISTRY="${ECR_REGISTRY:-}"
    PERSISTENCE="${PERSISTENCE:-true}"
    GIT_SYNC_REPO="${GIT_SYNC_REPO:-}"
    GIT_SYNC_BRANCH="${GIT_SYNC_BRANCH:-main}"
    GIT_SYNC_SUBPATH="${GIT_SYNC_SUBPATH:-dags}"
    HELM_TIMEOUT="${HELM_TIMEOUT:-15m}"
    ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-10m}"
    AIRFLOW_URL="${AIRFLOW_URL:-http://localhost:8080}"
    LOGS_HOST_DIR="$REPO_ROOT/logs" # kind-config.yaml extraMounts hostPath (./logs)
    case "$PERSISTENCE" in
    true | false) ;;
    *) die "PERSISTENCE must be true or false (got '$PERSISTENCE')" ;;
    esac
    [ "$DRY_RUN" = 0 ] || info "Dry run: printing the commands, running none"
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

cluster_exists() {
    show kind get clusters
    [ "$DRY_RUN" = 1 ] && return 1
    kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"
}

require_cluster() {
    cluster_exists || [ "$DRY_RUN" = 1 ] ||
        die "Kind cluster '$CLUSTER_NAME' not found: run scripts/install-airflow.sh (or install-airflow-2-ecr.sh) first"
}

require_release() {
    quiet_probe "${HELM[@]}" status "$HELM_RELEASE" --namespace "$NAMESPACE" || [ "$DRY_RUN" = 1 ] ||
        die "Helm release '$HELM_RELEASE' not found in namespace '$NAMESPACE': run scripts/install-airflow.sh first"
}

# ---------------------------------------------------------------------------------------------
# Cluster, namespace, secrets, volume

# Create the Kind cluster unless it exists; an existing cluster is never deleted or changed.
ensure_cluster() {
    if cluster_exists; then
        info "Kind cluster '$CLUSTER_NAME' exists: using it"
    else
        info "Creating Kind cluster '$CLUSTER_NAME' (kind-config.yaml)"
        # kind-config.yaml mounts ./logs (relative to the repository root) into the nodes.
        run mkdir -p "$LOGS_HOST_DIR"
        run chmod 0777 "$LOGS_HOST_DIR" # written by the airflow user (uid 50000) in the pods
        run kind create cluster --name "$CLUSTER_NAME" --config "$REPO_ROOT/kind-config.yaml" --wait 5m
    fi
}

ensure_namespace() {
    if quiet_probe "${KUBECTL[@]}" get namespace "$NAMESPACE"; then
        info "Namespace '$NAMESPACE' exists"
    else
        run "${KUBECTL[@]}" create namespace "$NAMESPACE"
    fi
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

# Private directory for secret material (values never appear on a command line or in output).
secret_dir() {
    if [ -z "${SECRET_TMP:-}" ]; then
        SECRET_TMP="$(mktemp -d)"
        chmod 700 "$SECRET_TMP"
        trap 'rm -rf "$SECRET_TMP"' EXIT
    fi
}

# Write value $2 for key $1 and print the --from-file argument for it.
secret_file_arg() {
    printf '%s' "$2" >"$SECRET_TMP/$1"
    printf -- '--from-file=%s=%s' "$1" "$SECRET_TMP/$1"
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
    secret_dir
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
    create_secret "$SECRET_POSTGRES" postgres-password "$(random_token 32)"
    if ! secret_exists "$SECRET_METADATA"; then
        # Built from the Postgres Secret, so the two always agree (also after a half-done run).
        local password="<postgres-password>"
        [ "$DRY_RUN" = 1 ] || password="$(secret_value "$SECRET_POSTGRES" postgres-password)"
        new_secret "$SECRET_METADATA" connection \
            "postgresql://postgres:${password}@${HELM_RELEASE}-postgresql.${NAMESPACE}:5432/postgres?sslmode=disable"
    else
        note "Secret $SECRET_METADATA exists: kept"
    fi
    ensure_connections_secret
    if [ -n "$GIT_SYNC_REPO" ] && [ -n "${GIT_SYNC_USERNAME:-}" ]; then
        # chart 1.18.0 reads both the git-sync v3 and v4 variable names
        apply_secret "$SECRET_GIT" \
            GIT_SYNC_USERNAME "$GIT_SYNC_USERNAME" GIT_SYNC_PASSWORD "${GIT_SYNC_PASSWORD:-}" \
            GITSYNC_USERNAME "$GIT_SYNC_USERNAME" GITSYNC_PASSWORD "${GIT_SYNC_PASSWORD:-}"
    fi
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

# The static PV + PVC for task logs (chart/logs-persistent-volume.yaml); apply is idempotent.
ensure_logs_volume() {
    [ "$PERSISTENCE" = true ] || return 0
    info "Task logs volume: PV airflow-logs-pv -> PVC airflow-logs-pvc (host: $LOGS_HOST_DIR)"
    local phase=""
    show "${KUBECTL[@]}" get persistentvolume airflow-logs-pv -o 'jsonpath={.status.phase}'
    [ "$DRY_RUN" = 1 ] ||
        phase="$("${KUBECTL[@]}" get persistentvolume airflow-logs-pv -o 'jsonpath={.status.phase}' 2>/dev/null || true)"
    if [ "$phase" = Released ]; then
        # Its old claim is gone (namespace deleted by hand): free it for the new claim, keep the logs.
        run "${KUBECTL[@]}" patch persistentvolume airflow-logs-pv --type json \
            -p '[{"op": "remove", "path": "/spec/claimRef"}]'
    fi
    run "${KUBECTL[@]}" --namespace "$NAMESPACE" apply -f "$REPO_ROOT/chart/logs-persistent-volume.yaml"
}

# ---------------------------------------------------------------------------------------------
# Image

# Unique per build: UTC time + commit (+ -dirty for uncommitted changes). Never "latest".
new_image_tag() {
    local sha=nogit dirty=""
    if git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        sha="$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo nocommit)"
        [ -z "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null)" ] || dirty="-dirty"
    fi
    printf '%s-%s%s' "$(date -u +%Y%m%dT%H%M%SZ)" "$sha" "$dirty"
}

# build_image REF: cicd/Dockerfile, versions from versions.env, OCI labels from git.
build_image() {
    local revision
    revision="$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
    info "Building $1"
    run docker build --file "$REPO_ROOT/cicd/Dockerfile" \
        --build-arg "AIRFLOW_VERSION=$AIRFLOW_VERSION" \
        --build-arg "PYTHON_VERSION=$PYTHON_VERSION" \
        --build-arg "GIT_REVISION=$revision" \
        --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
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
    if [ "$DRY_RUN" = 1 ]; then
        AWS_ACCOUNT="<aws-account-id>"
    elif ! AWS_ACCOUNT="$(aws sts get-caller-identity --query Account --output text)"; then
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
    quiet_probe aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
        --image-ids "imageTag=$1"
}

# The tag of the most recently pushed image (by imagePushedAt, not by name).
ecr_newest_tag() {
    local query='sort_by(imageDetails[?imageTags], &imagePushedAt)[-1].imageTags[0]'
    show aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
        --query "$query" --output text
    if [ "$DRY_RUN" = 1 ]; then
        echo "<newest-pushed-tag>"
        return 0
    fi
    aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
        --query "$query" --output text
}

# ---------------------------------------------------------------------------------------------
# Helm release

# helm_deploy REPOSITORY TAG: install or upgrade with the values files (no --reuse-values), so
# every run states the whole configuration.
helm_deploy() {
    local args=(
        upgrade --install "$HELM_RELEASE" airflow
        --repo https://airflow.apache.org --version "$AIRFLOW_CHART_VERSION"
        --namespace "$NAMESPACE"
        --values "$REPO_ROOT/chart/values.yaml"
    )
    [ "$PERSISTENCE" = false ] || args+=(--values "$REPO_ROOT/chart/values-override-with-persistence.yaml")
    args+=(--set "images.airflow.repository=$1" --set "images.airflow.tag=$2")
    if [ -n "$GIT_SYNC_REPO" ]; then
        args+=(
            --set dags.gitSync.enabled=true
            --set-string "dags.gitSync.repo=$GIT_SYNC_REPO"
            --set-string "dags.gitSync.branch=$GIT_SYNC_BRANCH"
            --set-string "dags.gitSync.ref=$GIT_SYNC_BRANCH"
            --set-string "dags.gitSync.subPath=$GIT_SYNC_SUBPATH"
        )
        [ -z "${GIT_SYNC_USERNAME:-}" ] || args+=(--set-string "dags.gitSync.credentialsSecret=$SECRET_GIT")
    fi
    # Pipeline settings that must be identical in every component and task pod (asset URIs).
    local i=0 var
    for var in STACKEXCHANGE_BUCKET STACKEXCHANGE_PREFIX DATABRICKS_JOB_ID; do
        [ -n "${!var:-}" ] || continue
        args+=(--set-string "env[$i].name=$var" --set-string "env[$i].value=${!var}")
        i=$((i + 1))
    done
    # No --wait: the chart's migration and create-user jobs are post-install/upgrade hooks and
    # the deployments wait for the migration; Helm blocks until those hook jobs complete (or the
    # timeout), then wait_rollouts waits for every workload.
    args+=(--timeout "$HELM_TIMEOUT")
    info "Helm release '$HELM_RELEASE': chart airflow $AIRFLOW_CHART_VERSION, image $1:$2"
    note "Helm waits for the database migration and user-creation jobs (timeout $HELM_TIMEOUT)"
    run "${HELM[@]}" "${args[@]}"
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
        echo "Dry run finished: nothing was run or changed."
        return 0
    fi
    cat <<EOF

Airflow is up: $AIRFLOW_URL
  user:     admin
  password: kubectl --context $KUBE_CONTEXT -n $NAMESPACE get secret $SECRET_ADMIN -o jsonpath='{.data.password}' | base64 -d; echo
Next: edit dags/, then scripts/upgrade-dags.sh (make k8s-upgrade-dags); health: scripts/check-airflow-status.sh (make k8s-status)
EOF
}
