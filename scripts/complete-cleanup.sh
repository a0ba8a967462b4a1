#!/usr/bin/env bash
# Remove everything the install created: Helm release, namespace, PVs, Kind cluster, log data.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/complete-cleanup.sh [--yes] [--dry-run] [--env-file FILE]

Deletes the Helm release, the namespace (with its Secrets and the Postgres data), the logs
and DAGs PersistentVolumes, the Kind cluster and the task logs under ./logs. It first looks
(read-only) at what exists and prints the plan; then asks for confirmation unless --yes;
without a terminal and without --yes it deletes nothing. --dry-run prints the same plan and
every command it would run, and runs none of them.

  --yes            do not ask
  --dry-run        print every command, run none (the read-only look still runs)
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

# What exists now (read-only queries, also with --dry-run): sets the HAVE_* flags and PLAN.
survey() {
    HAVE_CLUSTER=0 HAVE_RELEASE=0 HAVE_NAMESPACE=0 HAVE_LOGS_DIR=0
    HAVE_PVS=()
    PLAN=()
    info "Looking at what exists (read-only)"
    if query kind get clusters | grep -qx "$CLUSTER_NAME"; then
        HAVE_CLUSTER=1
        if query "${HELM[@]}" status "$HELM_RELEASE" --namespace "$NAMESPACE" >/dev/null 2>&1; then
            HAVE_RELEASE=1
            PLAN+=("Helm release '$HELM_RELEASE' in namespace '$NAMESPACE'")
        fi
        if query "${KUBECTL[@]}" get namespace "$NAMESPACE" >/dev/null 2>&1; then
            HAVE_NAMESPACE=1
            PLAN+=("namespace '$NAMESPACE' (Secrets, Postgres data)")
        fi
        local pv
        for pv in airflow-logs-pv airflow-dags-pv; do
            if query "${KUBECTL[@]}" get persistentvolume "$pv" >/dev/null 2>&1; then
                HAVE_PVS+=("$pv")
                PLAN+=("PersistentVolume $pv")
            fi
        done
        PLAN+=("task logs on the nodes ($NODE_LOGS_DIR)" "Kind cluster '$CLUSTER_NAME'")
    fi
    if [ -d "$LOGS_HOST_DIR" ]; then
        HAVE_LOGS_DIR=1
        PLAN+=("task logs in $LOGS_HOST_DIR")
    fi
}

confirm() {
    if [ ${#PLAN[@]} -eq 0 ]; then
        echo "Nothing to delete: no Kind cluster '$CLUSTER_NAME', no $LOGS_HOST_DIR."
        exit 0
    fi
    echo "This deletes:"
    printf '  - %s\n' "${PLAN[@]}"
    if [ "$ASSUME_YES" = 1 ] || [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    if [ ! -t 0 ]; then
        echo "No terminal to confirm and --yes not given: nothing deleted." >&2
        exit 1
    fi
    local answer
    read -r -p "Type 'yes' to delete all of it: " answer
    [ "$answer" = yes ] || {
        echo "Not confirmed: nothing deleted."
        exit 1
    }
}

main() {
    ASSUME_YES=0
    parse_common_args "$@"
    for arg in "${REST_ARGS[@]+"${REST_ARGS[@]}"}"; do
        case "$arg" in
        --yes) ASSUME_YES=1 ;;
        *) die "unknown argument '$arg' (see --help)" ;;
        esac
    done
    load_config
    [ "$PROFILE" = kind ] ||
        die "complete-cleanup.sh deletes the Kind cluster and is not for PROFILE=production: on an existing cluster remove the releases by hand (README \"Production\")"
    require_tools docker kind kubectl helm
    survey
    confirm

    if [ "$HAVE_CLUSTER" = 1 ]; then
        [ "$HAVE_RELEASE" = 0 ] ||
            run "${HELM[@]}" uninstall "$HELM_RELEASE" --namespace "$NAMESPACE" --wait --timeout 5m
        [ "$HAVE_NAMESPACE" = 0 ] ||
            run "${KUBECTL[@]}" delete namespace "$NAMESPACE" --ignore-not-found --wait --timeout=5m
        local pv
        for pv in "${HAVE_PVS[@]+"${HAVE_PVS[@]}"}"; do
            run "${KUBECTL[@]}" delete persistentvolume "$pv" --ignore-not-found
        done
        # Log files belong to the pods' uid 50000: remove them from inside a node (root).
        run docker exec "$CLUSTER_NAME-control-plane" find "$NODE_LOGS_DIR" -mindepth 1 -delete ||
            warn "could not empty the logs volume from the node; $LOGS_HOST_DIR may need 'sudo rm -rf'"
        run kind delete cluster --name "$CLUSTER_NAME"
    fi
    if [ "$HAVE_LOGS_DIR" = 1 ]; then
        run rm -rf "$LOGS_HOST_DIR" ||
            die "could not remove $LOGS_HOST_DIR (files owned by uid 50000?): sudo rm -rf '$LOGS_HOST_DIR'"
    fi
    echo
    if [ "$DRY_RUN" = 1 ]; then
        echo "Dry run finished: nothing was deleted."
    else
        echo "Cleaned up. Next: scripts/install-airflow.sh (make k8s-install) to start again."
    fi
}

main "$@"
