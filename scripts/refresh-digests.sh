#!/usr/bin/env bash
# Re-pin the base image, the Postgres image and the GitHub Actions to what their tags point at now.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF_USAGE'
Usage: scripts/refresh-digests.sh [--dry-run] [--env-file FILE]

Looks up (read-only, also with --dry-run) the current digest of
  - apache/airflow:<AIRFLOW_VERSION>-python<PYTHON_VERSION> -> cicd/image-digests.env
  - <postgresql.image.repository>:<tag> of chart/values.yaml -> postgresql.image.digest there
with `crane digest` (or `docker buildx imagetools inspect` when crane is absent), and the commit
of each GitHub Action's tag in .github/workflows/*.yml (`uses: owner/repo@<sha> # <tag>`) with
`git ls-remote`; then writes what changed. Review with `git diff`, run the tests, commit.

  --dry-run        print the lookups' results and the edits, change no file
  --env-file FILE  configuration (default: .env; see .env.example)
  -h, --help       this help
EOF_USAGE
}

# image_digest IMAGE: sha256:... of the image (its index for multi-platform images).
image_digest() {
    local digest
    if command -v crane >/dev/null 2>&1; then
        digest="$(query crane digest "$1")"
    else
        digest="$(query docker buildx imagetools inspect "$1" --format '{{json .Manifest.Digest}}' | tr -d '"')"
    fi
    [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "no digest for $1 (got '$digest'): check the tag exists and your registry access"
    printf '%s' "$digest"
}

# tag_commit OWNER/REPO TAG: the commit the tag points at (peeled for annotated tags).
tag_commit() {
    local refs commit
    refs="$(query git ls-remote "https://github.com/$1" "refs/tags/$2" "refs/tags/$2^{}")"
    commit="$(awk '$2 ~ /\^\{\}$/ {peeled=$1} {any=$1} END {print (peeled != "" ? peeled : any)}' <<<"$refs")"
    [[ "$commit" =~ ^[0-9a-f]{40}$ ]] || die "tag $2 not found in github.com/$1"
    printf '%s' "$commit"
}

# set_line FILE OLD NEW: replace one exact line (no regex), reporting the change.
set_line() {
    local file="$1" old="$2" new="$3"
    [ "$old" != "$new" ] || return 0
    note "${file#"$REPO_ROOT"/}: $old -> $new"
    CHANGED=$((CHANGED + 1))
    [ "$DRY_RUN" = 0 ] || return 0
    OLD="$old" NEW="$new" awk '$0 == ENVIRON["OLD"] {print ENVIRON["NEW"]; next} {print}' "$file" >"$file.new"
    mv "$file.new" "$file"
}

refresh_base_image() {
    local file="$REPO_ROOT/cicd/image-digests.env" image digest
    image="apache/airflow:$AIRFLOW_VERSION-python$PYTHON_VERSION"
    info "Base image $image"
    digest="$(image_digest "$image")"
    set_line "$file" "$(grep '^AIRFLOW_BASE_DIGEST=' "$file")" "AIRFLOW_BASE_DIGEST=$digest"
    set_line "$file" "$(grep '^# apache/airflow:' "$file")" "# $image"
}

refresh_postgres_image() {
    local file="$REPO_ROOT/chart/values.yaml" repository tag digest old
    repository="$(sed -n 's/^    repository: \(bitnami[^ ]*\).*/\1/p' "$file")"
    tag="$(sed -n '/^postgresql:/,/^[a-z]/s/^    tag: \([^ ]*\).*/\1/p' "$file")"
    if [ -z "$repository" ] || [ -z "$tag" ]; then
        die "postgresql.image repository/tag not found in chart/values.yaml"
    fi
    info "Postgres image $repository:$tag"
    digest="$(image_digest "$repository:$tag")"
    old="$(grep -m1 '^    digest: ' "$file")"
    set_line "$file" "$old" "    digest: \"$digest\""
}

refresh_actions() {
    local workflow line action tag commit lines
    for workflow in "$REPO_ROOT"/.github/workflows/*.yml; do
        info "Actions in ${workflow#"$REPO_ROOT"/}"
        mapfile -t lines <"$workflow"
        for line in "${lines[@]}"; do
            [[ "$line" =~ uses:\ ([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)@([0-9a-f]{40})\ \#\ (v[0-9.]+)$ ]] || continue
            action="${BASH_REMATCH[1]}"
            tag="${BASH_REMATCH[3]}"
            commit="$(tag_commit "$action" "$tag")"
            set_line "$workflow" "$line" "${line/${BASH_REMATCH[2]}/$commit}"
        done
    done
}

main() {
    parse_common_args "$@"
    [ ${#REST_ARGS[@]} -eq 0 ] || die "unknown argument '${REST_ARGS[0]}' (see --help)"
    load_config
    require_tools git
    CHANGED=0
    refresh_base_image
    refresh_postgres_image
    refresh_actions
    echo
    if [ "$CHANGED" = 0 ]; then
        echo "Every pin is current."
    elif [ "$DRY_RUN" = 1 ]; then
        echo "Dry run: $CHANGED pin(s) would change; no file written."
    else
        echo "$CHANGED pin(s) updated. Next: git diff, make test, commit."
    fi
}

main "$@"
