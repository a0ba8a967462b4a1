#!/usr/bin/env bash
# Install (or upgrade) Airflow with an image from Amazon ECR: on the Kind cluster, or with
# PROFILE=production on an existing cluster (README "Production").
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/install-airflow-2-ecr.sh [--tag TAG] [--dry-run] [--env-file FILE]

Installs Airflow with an image from ECR. Safe to run again: existing cluster, namespace and
Secrets are kept, the Helm releases are upgraded in place.

Kind (PROFILE=kind, the default): preflight (docker, kind, kubectl, helm, aws + AWS identity)
-> Kind cluster if absent -> ECR login -> image (--tag, else the newest image built from main)
-> docker pull + kind load -> namespace (Pod Security "restricted") + Secrets if absent ->
logs/DAGs volumes -> helm upgrade --install (Airflow, then chart/platform) -> wait for the jobs
and every rollout -> URL and login.

Production (PROFILE=production in .env): the existing cluster of KUBE_CONTEXT, the release
image --tag (required; the cluster pulls it from ECR), the external database
(METADATA_DB_URI or METADATA_DB_SECRET, TLS required) behind PgBouncer, chart/values-production.yaml;
no Kind cluster, no docker.

  --tag TAG        the release: image tag in ECR_REPOSITORY (e.g. v1.2.0) and, with
                   GIT_SYNC_REPO, the git ref git-sync checks out, so one tag pins both;
                   rollback = install the previous tag. Default (Kind only): the newest
                   image built from main, main-<UTC time>-<commit>
  --ref TAG        the same as --tag
  --dry-run        run only read-only queries (what exists) and print every other command
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
    check_production_config
    if [ "$PROFILE" = production ]; then
        [ -n "$tag" ] ||
            die "PROFILE=production installs a release: name its tag with --tag (e.g. --tag v1.2.0; 'git tag' lists them)"
        require_tools kubectl helm aws
    else
        require_tools docker kind kubectl helm aws
    fi
    pin_release "$tag"
    aws_identity
    ensure_cluster
    load_external_db
    [ "$PROFILE" = production ] || ecr_login

    info "Image from ECR repository $ECR_REPOSITORY"
    if [ -n "$tag" ]; then
        ecr_tag_exists "$tag" ||
            die "tag '$tag' not found in ECR repository $ECR_REPOSITORY ($AWS_REGION): list them with 'aws ecr describe-images --repository-name $ECR_REPOSITORY'"
    else
        tag="$(ecr_newest_tag)"
        if [ -z "$tag" ] || [ "$tag" = None ]; then
            die "no image built from main in ECR repository $ECR_REPOSITORY ($AWS_REGION): merge to main (CI pushes it), or name one with --tag"
        fi
        note "newest image from main: $tag"
    fi
    local image="$ECR_REGISTRY/$ECR_REPOSITORY"
    if [ "$PROFILE" = kind ]; then
        run docker pull "$image:$tag"
        load_image "$image:$tag"
    fi

    ensure_namespace
    ensure_secrets
    ensure_logs_volume
    ensure_dags_volume
    helm_deploy "$image" "$tag"
    wait_rollouts
    print_access
}

main "$@"
