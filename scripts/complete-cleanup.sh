#!/usr/bin/env bash
# Remove everything the install created: Helm release, namespace, logs PV, Kind cluster, log data.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/complete-cleanup.sh [--yes] [--dry-run] [--env-file FILE]

Deletes the Helm release, the namespace (with its Secrets and the Postgres data), the logs
PersistentVolume, the Kind cluster and the task logs under ./logs. Asks for confirmation
unless --yes; without a terminal and without --yes it deletes nothing.

  --yes            do not ask
  --dry-run        print every command, run none
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

confirm() {
    cat <<EOF_PLAN
This deletes, in Kind cluster '$CLUSTER_NAME':
  - Helm release '$HELM_RELEASE' and namespace '$NAMESPACE' (Secrets, Postgres data)
  - PersistentVolume airflow-logs-pv
  - the Kind cluster '$CLUSTER_NAME' itself
  - task logs in $LOGS_HOST_DIR
EOF_PLAN
    [ "$ASSUME_YES" = 1 ] && return 0
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
    require_tools docker kind kubectl helm
    confirm

    if cluster_exists; then
        if quiet_probe "${HELM[@]}" status "$HELM_RELEASE" --namespace "$NAMESPACE"; then
            run "${HELM[@]}" uninstall "$HELM_RELEASE" --namespace "$NAMESPACE" --wait --timeout 5m
        fi
        run "${KUBECTL[@]}" delete namespace "$NAMESPACE" --ignore-not-found --wait --timeout=5m
        run "${KUBECTL[@]}" delete persistentvolume airflow-logs-pv --ignore-not-found
        # Log files belong to the pods' uid 50000: remove them from inside a node (root).
        run docker exec "$CLUSTER_NAME-control-plane" \
            find /var/local/airflow/logs -mindepth 1 -delete ||
            warn "could not empty the logs volume from the node; $LOGS_HOST_DIR may need 'sudo rm -rf'"
        run kind delete cluster --name "$CLUSTER_NAME"
    else
        info "Kind cluster '$CLUSTER_NAME' does not exist: nothing to delete there"
    fi
    if [ -d "$LOGS_HOST_DIR" ]; then
        run rm -rf "$LOGS_HOST_DIR" ||
            die "could not remove $LOGS_HOST_DIR (files owned by uid 50000?): sudo rm -rf '$LOGS_HOST_DIR'"
    fi
    echo
    echo "Cleaned up. Next: scripts/install-airflow.sh (make k8s-install) to start again."
}

main "$@"
