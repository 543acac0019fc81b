#!/usr/bin/env bash
# Builds the two container images, offline, with no registry:
#   echo-service-a:VERSION and echo-service-b:VERSION, each FROM scratch with one statically
#   linked binary (glibc, -C target-feature=+crt-static on x86_64-unknown-linux-gnu).
# The release build goes to its own target directory (CARGO_TARGET_DIR, default
# target/static) so it neither waits on nor invalidates the ordinary target/ builds.
# The docker build context is a temporary directory holding the binary and its Dockerfile
# only, never the repository or target/.
# VERSION is the workspace version in Cargo.toml ([workspace.package] version), the tag that
# compose.yaml and deploy/k8s/ name; never `latest`.
# Environment: IMAGE_TAG (default: that version), CARGO_TARGET_DIR, SKIP_CARGO=1 (reuse the binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
# The version line of [workspace.package] (the first `version = "…"` after that header).
version=$(sed -n '/^\[workspace\.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "build-images: no version in Cargo.toml's [workspace.package]" >&2; exit 1; }
tag=${IMAGE_TAG:-$version}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/static}
bin_dir="$CARGO_TARGET_DIR/$target/release"

for tool in docker readelf; do
  command -v "$tool" >/dev/null || { echo "build-images: needs $tool" >&2; exit 1; }
done

if [ "${SKIP_CARGO:-0}" != 1 ]; then
  rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target"
  echo "== static release build ($bin_dir)"
  # Symbols stripped: the image carries the binary only (the workspace profile keeps debug
  # line tables for perf; they would triple the image).
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --target "$target" -p service_a -p service_b
fi

for svc in service_a service_b; do
  bin="$bin_dir/$svc"
  [ -x "$bin" ] || { echo "build-images: $bin is missing" >&2; exit 1; }
  # A static binary has no program interpreter and no NEEDED libraries (readelf); file(1),
  # where installed, says so too.
  if command -v file >/dev/null; then
    desc=$(file -L "$bin")
    case $desc in
      *"statically linked"* | *"static-pie linked"*) ;;
      *) echo "build-images: $bin is not static: $desc" >&2; exit 1 ;;
    esac
  fi
  if readelf -l "$bin" 2>/dev/null | grep -q "Requesting program interpreter"; then
    echo "build-images: $bin asks for a dynamic loader" >&2
    exit 1
  fi
  if readelf -d "$bin" 2>/dev/null | grep -q "(NEEDED)"; then
    echo "build-images: $bin needs shared libraries:" >&2
    readelf -d "$bin" | grep "(NEEDED)" >&2
    exit 1
  fi
done

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for svc in service_a service_b; do
  image="echo-${svc//_/-}:$tag"
  rm -rf "${ctx:?}"/*
  install -m 0555 "$bin_dir/$svc" "$ctx/$svc" # root-owned, read+exec for the non-root user
  cp "deploy/$svc.Dockerfile" "$ctx/Dockerfile"
  old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  echo "== docker build $image"
  # The legacy builder: this engine has no BuildKit plugin, and nothing is pulled (scratch).
  # Its deprecation notice is left out; anything else it says is shown if the build fails.
  if ! out=$(DOCKER_BUILDKIT=0 docker build -q -t "$image" \
    --label "org.opencontainers.image.revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$ctx" 2>&1); then
    echo "$out" >&2
    exit 1
  fi
  docker image inspect -f '{{.RepoTags}} {{.Size}} bytes, user {{.Config.User}}' "$image"
  # The image this tag named before, now untagged: removed unless a container still uses it.
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
  fi
done
