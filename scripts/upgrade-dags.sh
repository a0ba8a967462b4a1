#!/usr/bin/env bash
# Ship changed DAGs (and shared code) to the running install, rebuilding the image only if needed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/upgrade-dags.sh [--ref REF] [--dry-run] [--env-file FILE]

Brings the running install up to date with this checkout and says which path it took:
  - dependencies changed (requirements.txt, constraints.txt, cicd/Dockerfile, versions.env,
    compared with the running image's label): new uniquely tagged image, kind load,
    `helm upgrade` with the same values files as the install, wait for every rollout;
  - DAGs from the host (DAGS_FROM_HOST=true) or from git (GIT_SYNC_REPO), dependencies
    unchanged: no image build; the DAG processor picks the change up by itself (waits until it
    is ready);
  - DAGs baked into the image: new image and rollout as above.
  - --ref REF with DAGs from git, dependencies unchanged: `helm upgrade` with the running image,
    git-sync moves to REF (a tag or commit pins the DAGs; a branch follows it).
Then lists the DAG files changed since the running image's commit. The Kind profile only: a
production release is installed by tag (scripts/install-airflow-2-ecr.sh --tag TAG).

  --ref REF        with GIT_SYNC_REPO: the git tag, commit or branch git-sync checks out
  --dry-run        run only read-only queries (what runs now) and print every other command
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

# The image the scheduler runs now (read-only, also with --dry-run).
running_image() {
    query "${KUBECTL[@]}" --namespace "$NAMESPACE" get deployment "$HELM_RELEASE-scheduler" \
        -o 'jsonpath={.spec.template.spec.containers[0].image}'
}

# image_label IMAGE LABEL: the label's value, empty when the image or the label is unknown here.
image_label() {
    docker image inspect "$1" --format "{{ index .Config.Labels \"$2\" }}" 2>/dev/null || true
}

# DAG files changed between the running image's commit (OCI label) and this checkout.
report_changes() {
    local old_image="$1" old_revision
    [ "$DRY_RUN" = 0 ] || return 0
    if ! git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
        note "Not a git checkout: changed DAG files cannot be listed"
        return 0
    fi
    old_revision="$(image_label "$old_image" org.opencontainers.image.revision)"
    if [ -n "$old_revision" ] && git -C "$REPO_ROOT" cat-file -e "$old_revision^{commit}" 2>/dev/null; then
        note "DAG changes since ${old_revision:0:12}:"
        git -C "$REPO_ROOT" --no-pager diff --stat "$old_revision" -- dags/ | sed 's/^/    /'
    else
        note "The running image's commit is unknown here; uncommitted DAG changes:"
    fi
    git -C "$REPO_ROOT" status --short -- dags/ | sed 's/^/    /'
}

rebuild_and_roll_out() {
    local old_image="$1" tag
    tag="$(new_image_tag)"
    build_image "$LOCAL_IMAGE_REPOSITORY:$tag"
    load_image "$LOCAL_IMAGE_REPOSITORY:$tag"
    helm_deploy "$LOCAL_IMAGE_REPOSITORY" "$tag"
    wait_rollouts
    info "Image: $old_image -> $LOCAL_IMAGE_REPOSITORY:$tag"
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
        die "PROFILE=production is upgraded by installing the new release tag: scripts/install-airflow-2-ecr.sh --tag <tag> (README \"Production\")"
    [ -z "$ref" ] || [ -n "$GIT_SYNC_REPO" ] ||
        die "--ref moves git-sync: set GIT_SYNC_REPO (without it the DAGs come from the image or the host)"
    check_logs_config
    pin_release "$ref"
    require_tools docker kind kubectl helm git
    require_cluster
    require_release

    local old_image running_deps wanted_deps was
    old_image="$(running_image)"
    wanted_deps="$(deps_hash)"
    running_deps="$(image_label "$old_image" "$DEPS_LABEL")"
    if [ "$running_deps" != "$wanted_deps" ]; then
        was="${running_deps:0:12}"
        info "Path: image rebuild (dependencies changed: ${was:-unknown} -> ${wanted_deps:0:12})"
        rebuild_and_roll_out "$old_image"
    elif [ -n "$ref" ]; then
        info "Path: no image build (dependencies unchanged); git-sync moves to $ref"
        helm_deploy "${old_image%:*}" "${old_image##*:}"
        wait_rollouts
    elif [ "$DAGS_FROM_HOST" = true ] || [ -n "$GIT_SYNC_REPO" ]; then
        local source="the host's dags/ (DAGS_FROM_HOST=true)"
        [ -z "$GIT_SYNC_REPO" ] || source="git ($GIT_SYNC_REPO, pushed commits)"
        info "Path: no image build (dependencies unchanged); the DAGs come from $source"
        note "The DAG processor re-parses them within its refresh interval; task pods import them at start"
        run "${KUBECTL[@]}" --namespace "$NAMESPACE" rollout status "deployment/$HELM_RELEASE-dag-processor" \
            --timeout "$ROLLOUT_TIMEOUT"
    else
        info "Path: image rebuild (the DAGs are baked into the image; DAGS_FROM_HOST=true skips this on Kind)"
        rebuild_and_roll_out "$old_image"
    fi
    report_changes "$old_image"
    echo
    echo "Next: scripts/check-airflow-status.sh (make k8s-status) shows DAG import errors; UI: $AIRFLOW_URL"
}

main "$@"
