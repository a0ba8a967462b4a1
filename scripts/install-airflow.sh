#!/usr/bin/env bash
# Install (or upgrade) Airflow on a local Kind cluster with an image built here (no AWS needed).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/install-airflow.sh [--dry-run] [--env-file FILE]

Installs Airflow on the Kind cluster with an image built from this checkout. Safe to run again:
existing cluster, namespace and Secrets are kept, the Helm release is upgraded in place.

Steps: preflight (docker, kind, kubectl, helm) -> Kind cluster if absent -> docker build
(cicd/Dockerfile, unique tag) + kind load -> namespace (Pod Security "restricted") + Secrets
if absent -> logs/DAGs volumes -> helm upgrade --install -> wait for the jobs and every
rollout -> URL and login.

  --dry-run        print every command, run none
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

main() {
    parse_common_args "$@"
    [ ${#REST_ARGS[@]} -eq 0 ] || die "unknown argument '${REST_ARGS[0]}' (see --help)"
    load_config
    check_logs_config
    require_tools docker kind kubectl helm git
    ensure_cluster

    local tag
    tag="$(new_image_tag)"
    build_image "$LOCAL_IMAGE_REPOSITORY:$tag"
    load_image "$LOCAL_IMAGE_REPOSITORY:$tag"

    ensure_namespace
    ensure_secrets
    ensure_logs_volume
    ensure_dags_volume
    helm_deploy "$LOCAL_IMAGE_REPOSITORY" "$tag"
    wait_rollouts
    print_access
}

main "$@"
