#!/usr/bin/env bash
# Bring up a local Docker engine and the test images for loomrun's Docker tests. Idempotent.
#
# Runs as root on a fresh Debian 12 (CI) or on a developer machine: installs docker.io and
# busybox-static when missing, starts dockerd in the background when the socket does not answer
# (no systemd needed), waits for it, then builds the test images locally (no registry is used):
#   loom-test/busybox:latest  FROM scratch + static busybox, applets installed in /bin, PATH=/bin
#   loom-test/httpd:latest    the above running `httpd -f -p 80` (a service for the tests)
# Prints one line per action. Environment: DOCKER_UP_WAIT (seconds to wait for the engine, 60),
# DOCKERD_LOG (dockerd's log file, /var/log/loom-dockerd.log).
set -euo pipefail

WAIT_S="${DOCKER_UP_WAIT:-60}"
LOG="${DOCKERD_LOG:-/var/log/loom-dockerd.log}"
SOCK="/var/run/docker.sock"
IMAGE="loom-test/busybox:latest"
HTTPD_IMAGE="loom-test/httpd:latest"

say() { echo "docker-up: $*"; }
die() { echo "docker-up: error: $*" >&2; exit 1; }

engine_answers() {
    # The local socket only: a DOCKER_HOST set in the caller's environment must not hide a dead engine.
    DOCKER_HOST="unix://$SOCK" timeout 10 docker info >/dev/null 2>&1
}

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    package_installed busybox-static || missing+=(busybox-static)
    if [ "${#missing[@]}" -eq 0 ]; then
        say "packages present (docker.io, busybox-static)"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "need root to install ${missing[*]}"
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

package_installed() {
    # busybox-static (not the dynamic busybox) is what can go FROM scratch; it owns /bin/busybox.
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

start_engine() {
    if engine_answers; then
        say "engine answers on $SOCK"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "the engine does not answer on $SOCK and starting dockerd needs root"
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd is running but not answering yet; waiting"
    else
        say "starting dockerd in the background (log: $LOG)"
        mkdir -p "$(dirname "$LOG")"
        # setsid: dockerd must outlive this script and the terminal that ran it.
        setsid nohup dockerd --host "unix://$SOCK" >>"$LOG" 2>&1 </dev/null &
    fi
    local waited=0
    until engine_answers; do
        if [ "$waited" -ge "$WAIT_S" ]; then
            tail -n 20 "$LOG" >&2 2>/dev/null || true
            die "dockerd did not answer on $SOCK within ${WAIT_S}s (log: $LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "engine answers on $SOCK after ${waited}s"
}

image_label() {
    DOCKER_HOST="unix://$SOCK" docker image inspect -f '{{ index .Config.Labels "loom.test.busybox" }}' \
        "$1" 2>/dev/null || true
}

# build_image NAME CONTEXT: build CONTEXT/Dockerfile as NAME unless NAME already carries $DIGEST.
build_image() {
    local name="$1" ctx="$2"
    if [ "$(image_label "$name")" = "$DIGEST" ]; then
        say "image $name up to date"
        return
    fi
    say "building $name"
    # The classic builder: Debian's engine has no BuildKit front end and the build needs no registry.
    if ! DOCKER_HOST="unix://$SOCK" DOCKER_BUILDKIT=0 docker build -q -t "$name" "$ctx" >"$ctx/build.log" 2>&1; then
        cat "$ctx/build.log" >&2
        die "building $name failed"
    fi
    say "built $name"
}

build_images() {
    local ctx
    DIGEST="$(sha256sum /bin/busybox | cut -c1-16)"
    ctx="$(mktemp -d)"
    trap 'rm -rf "$ctx"' RETURN
    mkdir "$ctx/busybox" "$ctx/httpd"
    cp /bin/busybox "$ctx/busybox/busybox"
    cat >"$ctx/busybox/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
LABEL loom.test.busybox=$DIGEST
CMD ["/bin/sh"]
EOF
    build_image "$IMAGE" "$ctx/busybox"
    # A service for the tests: busybox httpd serving one page on port 80.
    cat >"$ctx/httpd/Dockerfile" <<EOF
FROM $IMAGE
RUN mkdir /www && echo loom-service-ok > /www/index.html
LABEL loom.test.busybox=$DIGEST
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
EOF
    build_image "$HTTPD_IMAGE" "$ctx/httpd"
}

install_packages
start_engine
build_images
say "ready"
