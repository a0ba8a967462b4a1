#!/usr/bin/env bash
# Install (or upgrade) Airflow on a local Kind cluster with an image from Amazon ECR.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/install-airflow-2-ecr.sh [--tag TAG] [--dry-run] [--env-file FILE]

Installs Airflow on the Kind cluster with an image from ECR. Safe to run again: existing
cluster, namespace and Secrets are kept, the Helm release is upgraded in place.

Steps: preflight (docker, kind, kubectl, helm, aws + AWS identity) -> Kind cluster if absent ->
ECR login -> image (--tag, else the newest image built from main) -> docker pull + kind load ->
namespace (Pod Security "restricted") + Secrets if absent -> logs/DAGs volumes ->
helm upgrade --install -> wait for the jobs and every rollout -> URL and login.

  --tag TAG        image tag in ECR_REPOSITORY, e.g. a release v1.2.0 (default: the newest
                   image built from main, main-<UTC time>-<commit>; branch builds are
                   never picked unless named here)
  --dry-run        print every command, run none
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

main() {
    parse_common_args "$@"
    parse_tag_arg "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
    local tag="$TAG"
    load_config
    check_logs_config
    require_tools docker kind kubectl helm aws
    aws_identity
    ensure_cluster
    ecr_login

    info "Image from ECR repository $ECR_REPOSITORY"
    if [ -n "$tag" ]; then
        ecr_tag_exists "$tag" || [ "$DRY_RUN" = 1 ] ||
            die "tag '$tag' not found in ECR repository $ECR_REPOSITORY ($AWS_REGION): list them with 'aws ecr describe-images --repository-name $ECR_REPOSITORY'"
    else
        tag="$(ecr_newest_tag)"
        if [ -z "$tag" ] || [ "$tag" = None ]; then
            die "no image built from main in ECR repository $ECR_REPOSITORY ($AWS_REGION): merge to main (CI pushes it), or name one with --tag"
        fi
        note "newest image from main: $tag"
    fi
    local image="$ECR_REGISTRY/$ECR_REPOSITORY"
    run docker pull "$image:$tag"
    load_image "$image:$tag"

    ensure_namespace
    ensure_secrets
    ensure_logs_volume
    ensure_dags_volume
    helm_deploy "$image" "$tag"
    wait_rollouts
    print_access
}

main "$@"
