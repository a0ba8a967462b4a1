#!/usr/bin/env bash
# Ship changed DAGs (and shared code) to the running install: new image, same values, rollout.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/upgrade-dags.sh [--dry-run] [--env-file FILE]

Builds a new uniquely tagged image from this checkout, loads it into Kind, runs
`helm upgrade` with the same values files as the install (no --reuse-values), waits for every
rollout and reports the image change and the DAG files changed since the running image.
With git-sync on (GIT_SYNC_REPO), pushed DAGs arrive without this; run it when the image
itself must change (shared code in dags/stackexchange, requirements).

  --dry-run        print every command, run none
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

# The image the scheduler runs now.
running_image() {
    show "${KUBECTL[@]}" --namespace "$NAMESPACE" get deployment "$HELM_RELEASE-scheduler" \
        -o 'jsonpath={.spec.template.spec.containers[0].image}'
    if [ "$DRY_RUN" = 1 ]; then
        echo "<running image>"
        return 0
    fi
    "${KUBECTL[@]}" --namespace "$NAMESPACE" get deployment "$HELM_RELEASE-scheduler" \
        -o 'jsonpath={.spec.template.spec.containers[0].image}'
}

# DAG files changed between the running image's commit (OCI label) and this checkout.
report_changes() {
    local old_image="$1" new_image="$2" old_revision=""
    info "Image: $old_image -> $new_image"
    [ "$DRY_RUN" = 0 ] || return 0
    if ! git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        note "Not a git checkout: changed DAG files cannot be listed"
        return 0
    fi
    old_revision="$(docker image inspect "$old_image" \
        --format '{{ index .Config.Labels "org.opencontainers.image.revision" }}' 2>/dev/null || true)"
    if [ -n "$old_revision" ] && git -C "$REPO_ROOT" cat-file -e "$old_revision^{commit}" 2>/dev/null; then
        note "DAG changes since ${old_revision:0:12}:"
        git -C "$REPO_ROOT" --no-pager diff --stat "$old_revision" -- dags/ | sed 's/^/    /'
    else
        note "The running image's commit is unknown here; uncommitted DAG changes:"
    fi
    git -C "$REPO_ROOT" status --short -- dags/ | sed 's/^/    /'
}

main() {
    parse_common_args "$@"
    [ ${#REST_ARGS[@]} -eq 0 ] || die "unknown argument '${REST_ARGS[0]}' (see --help)"
    load_config
    require_tools docker kind kubectl helm git
    require_cluster
    require_release

    local old_image tag
    old_image="$(running_image)"
    tag="$(new_image_tag)"
    build_image "$LOCAL_IMAGE_REPOSITORY:$tag"
    load_image "$LOCAL_IMAGE_REPOSITORY:$tag"
    helm_deploy "$LOCAL_IMAGE_REPOSITORY" "$tag"
    wait_rollouts
    report_changes "$old_image" "$LOCAL_IMAGE_REPOSITORY:$tag"
    echo
    echo "Next: scripts/check-airflow-status.sh (make k8s-status) shows DAG import errors; UI: $AIRFLOW_URL"
}

main "$@"
