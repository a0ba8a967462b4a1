#!/usr/bin/env bash
# Install (or upgrade) Airflow on a local Kind cluster with an image built here (no AWS needed).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/install-airflow.sh [--ref REF] [--dry-run] [--env-file FILE]

Installs Airflow on the Kind cluster with an image built from this checkout. Safe to run again:
existing cluster, namespace and Secrets are kept, the Helm release is upgraded in place.

Steps: preflight (docker, kind, kubectl, helm) -> Kind cluster if absent -> docker build
(cicd/Dockerfile, unique tag) + kind load -> namespace (Pod Security "restricted") + Secrets
if absent -> logs/DAGs volumes -> helm upgrade --install -> wait for the jobs and every
rollout -> URL and login. The Kind profile only: PROFILE=production installs a released image
with scripts/install-airflow-2-ecr.sh --tag TAG.

  --ref REF        with GIT_SYNC_REPO: the git tag, commit or branch git-sync checks out
                   (default GIT_SYNC_REF, else GIT_SYNC_BRANCH)
  --dry-run        run only read-only queries (what exists) and print every other command
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

main() {
    parse_common_args "$@"
    local ref=""
    set -- "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
    while [ $# -gt 0 ]; do
        case "$1" in
        --ref)
            [ $# -ge 2 ] || die "--ref needs a value"
            ref="$2"
            check_ref --ref "$ref"
            shift
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
    load_config
    [ "$PROFILE" = kind ] ||
        die "PROFILE=production installs a released image from the registry onto an existing cluster: scripts/install-airflow-2-ecr.sh --tag <release tag> (README \"Production\")"
    check_logs_config
    pin_release "$ref"
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
