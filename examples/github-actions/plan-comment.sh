#!/usr/bin/env bash
# Posts what a pull request does to each environment as one comment per environment, updated in
# place on every push: `phoenix plan ENV --ref HEAD_SHA --against BASE_SHA --output markdown` for
# every environment in either commit; an environment the change does not touch gets no comment
# (or, if it had one from an earlier push, that comment is updated to say "no changes").
#
# Usage: plan-comment.sh BASE_SHA HEAD_SHA
# Environment: GH_TOKEN (pull-requests: write), GITHUB_REPOSITORY (owner/name), PR_NUMBER;
# PHOENIX_PLAN_LIVE=1 adds --live (needs the live system's credentials: see phoenix-pr.yml).
# Exit: 0 when every plan was made (with or without changes), 1 when one could not be made or an
# environment is invalid at HEAD_SHA (its comment then shows the diagnostics).
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 BASE_SHA HEAD_SHA" >&2
  exit 64
fi
base=$1
head=$2
: "${GITHUB_REPOSITORY:?set GITHUB_REPOSITORY=owner/name}"
: "${PR_NUMBER:?set PR_NUMBER to the pull request number}"

live=()
if [ "${PHOENIX_PLAN_LIVE:-0}" = 1 ]; then
  live=(--live)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The id of this pull request's comment that starts with the marker, if there is one.
comment_id() {
  gh api --paginate "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" \
    --jq ".[] | select(.body | startswith(\"$1\")) | .id" | head -n 1
}

# Creates the comment, or updates the one that carries the marker.
post() {
  local marker=$1 body=$2 id
  id=$(comment_id "$marker")
  if [ -n "$id" ]; then
    gh api --method PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$id" -F "body=@$body" > /dev/null
    echo "updated comment $id"
  else
    gh api --method POST "repos/$GITHUB_REPOSITORY/issues/$PR_NUMBER/comments" -F "body=@$body" > /dev/null
    echo "posted a comment"
  fi
}

# Every environment of either commit: one added, removed or changed by the pull request included.
envs=$(
  {
    git ls-tree -d --name-only "$base" environments/
    git ls-tree -d --name-only "$head" environments/
  } | sed 's|^environments/||' | sort -u
)

failed=0
for env in $envs; do
  marker="<!-- phoenix-plan:$env -->"
  out="$work/$env.md"
  set +e
  phoenix plan "$env" --ref "$head" --against "$base" --output markdown "${live[@]}" > "$out" 2> "$work/$env.err"
  code=$?
  set -e
  case "$code" in
    0)
      echo "$env: no changes"
      # Only a comment from an earlier push is updated; an untouched env gets none.
      if [ -n "$(comment_id "$marker")" ]; then
        post "$marker" "$out"
      fi
      ;;
    2)
      echo "$env: changes"
      post "$marker" "$out"
      ;;
    *)
      echo "::error title=phoenix plan $env::exit $code"
      cat "$work/$env.err" >&2
      failed=1
      # An env invalid at HEAD_SHA prints its diagnostics as the comment; any other failure gets
      # a short comment pointing at the log.
      if ! head -n 1 "$out" | grep -qF "$marker"; then
        {
          echo "$marker"
          echo "### phoenix plan \`$env\`: the plan could not be made (exit $code)"
          echo
          echo "See the job log of the workflow run."
        } > "$out"
      fi
      post "$marker" "$out"
      ;;
  esac
done
exit "$failed"
