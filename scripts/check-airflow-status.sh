#!/usr/bin/env bash
# Health of the install: pods, Helm release, API health, DAG import errors, failed task pods.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/check-airflow-status.sh [--dry-run] [--env-file FILE]

Read-only. Shows the pods and their health, the Helm release, the API server's health
endpoint, DAG import errors and the most recent failed task pods. Exits 1 if something is
unhealthy (not-ready pods, API not healthy, import errors), 0 otherwise.

  --dry-run        the same read-only queries (nothing here changes anything)
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

main() {
    local problems=() output
    parse_common_args "$@"
    [ ${#REST_ARGS[@]} -eq 0 ] || die "unknown argument '${REST_ARGS[0]}' (see --help)"
    load_config
    require_tools kubectl helm curl
    require_cluster
    require_release

    info "Helm release"
    query "${HELM[@]}" status "$HELM_RELEASE" --namespace "$NAMESPACE" --show-resources=false | head -n 6 || true

    info "Pods"
    query "${KUBECTL[@]}" --namespace "$NAMESPACE" get pods -l tier=airflow -o wide || true
    if output="$(query "${KUBECTL[@]}" --namespace "$NAMESPACE" get pods \
        -l 'tier=airflow,kubernetes_executor!=True' --field-selector=status.phase!=Succeeded \
        -o 'jsonpath={range .items[*]}{.metadata.name}{" "}{.status.containerStatuses[*].ready}{"\n"}{end}')"; then
        if grep -w false <<<"$output" >/dev/null; then
            problems+=("pods not ready: $(grep -w false <<<"$output" | cut -d' ' -f1 | tr '\n' ' ')")
        fi
    fi

    info "API health ($AIRFLOW_URL/api/v2/monitor/health)"
    if output="$(query curl -fsS --max-time 10 "$AIRFLOW_URL/api/v2/monitor/health")"; then
        note "$output"
        grep -q '"unhealthy"' <<<"$output" && problems+=("API reports an unhealthy component")
    elif [ "$DRY_RUN" = 0 ]; then
        problems+=("API not reachable at $AIRFLOW_URL")
    fi

    info "DAG import errors"
    if output="$(query "${KUBECTL[@]}" --namespace "$NAMESPACE" exec "deployment/$HELM_RELEASE-dag-processor" \
        -c dag-processor -- airflow dags list-import-errors --output plain)"; then
        if grep -q '^No data found' <<<"$output" || [ -z "$output" ]; then
            note "none"
        else
            printf '%s\n' "$output"
            problems+=("DAG import errors (above)")
        fi
    fi

    info "Failed task pods (most recent last)"
    query "${KUBECTL[@]}" --namespace "$NAMESPACE" get pods -l kubernetes_executor=True \
        --field-selector=status.phase=Failed --sort-by=.metadata.creationTimestamp || true

    echo
    if [ ${#problems[@]} -gt 0 ]; then
        printf 'UNHEALTHY: %s\n' "${problems[@]}"
        echo "Next: kubectl --context $KUBE_CONTEXT -n $NAMESPACE describe pod <pod>; logs in ./logs or 'kubectl logs <pod>'"
        exit 1
    fi
    [ "$DRY_RUN" = 1 ] && return 0
    echo "Healthy. UI: $AIRFLOW_URL. Next: edit dags/, then scripts/upgrade-dags.sh (make k8s-upgrade-dags)"
}

main "$@"
