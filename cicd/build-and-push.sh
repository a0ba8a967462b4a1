#!/usr/bin/env bash
# Build the Airflow image and push it to Amazon ECR (what .github/workflows/ci.yml does on push).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: cicd/build-and-push.sh [--tag TAG] [--dry-run] [--env-file FILE]

Builds cicd/Dockerfile (versions from versions.env, packages from the hashed
cicd/requirements.lock) and pushes it to <account>.dkr.ecr.<AWS_REGION>.amazonaws.com/<ECR_REPOSITORY>.
Creates the repository (immutable tags, scan on push) if absent; a tag already in ECR is not
pushed again. Refuses to build while an image pin is empty (cicd/image-digests.env, the
Postgres digest in chart/values.yaml): run 'make k8s-refresh-digests' first.

  --tag TAG        image tag (default: where it comes from + UTC time + commit, e.g.
                   main-20250101T120000Z-0123456789ab; in CI on a release tag: that tag)
  --dry-run        run only read-only queries and print every other command
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

ensure_repository() {
    if quiet_probe aws ecr describe-repositories --region "$AWS_REGION" --repository-names "$ECR_REPOSITORY"; then
        note "ECR repository $ECR_REPOSITORY exists"
    else
        run aws ecr create-repository --region "$AWS_REGION" --repository-name "$ECR_REPOSITORY" \
            --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true
    fi
}

main() {
    parse_common_args "$@"
    parse_tag_arg "${REST_ARGS[@]+"${REST_ARGS[@]}"}"
    local tag="$TAG"
    load_config
    require_pinned_digests
    [ "$tag" != latest ] || die "refusing the tag 'latest': every build gets a unique tag"
    [ -n "$tag" ] || tag="$(new_image_tag)"
    require_tools docker aws git
    aws_identity
    ensure_repository
    local image="$ECR_REGISTRY/$ECR_REPOSITORY:$tag"
    if ecr_tag_exists "$tag"; then
        info "$image is already in ECR: nothing to push"
        return 0
    fi
    ecr_login
    build_image "$image"
    run docker push "$image"
    echo
    echo "Pushed $image. Next: scripts/install-airflow-2-ecr.sh --tag $tag (by default it installs the newest main-* image)"
}

main "$@"
