#!/bin/sh
# Install notebookd from this checkout into a venv made from Debian's /usr/bin/python3.
#   as root:  /opt/notebookd, /usr/local/bin/notebookd, /etc/notebookd/notebookd.yaml (kept if present),
#             and the systemd units (not enabled: `systemctl enable --now notebookd` when ready)
#   as a user: ~/.local/share/notebookd/venv and ~/.local/bin/notebookd; nothing outside your home
# --run: then run the daemon in the foreground (root: every configured user; a user: your own server)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
run=no
for arg in "$@"; do
    case "$arg" in
        --run) run=yes ;;
        *) echo "usage: $0 [--run]" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -eq 0 ]; then
    venv=/opt/notebookd bin=/usr/local/bin
    if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q python3-venv || { apt-get update -q && apt-get install -y -q python3-venv; }
    fi
else
    venv="$HOME/.local/share/notebookd/venv" bin="$HOME/.local/bin"
    if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
        echo "install.sh: Python's venv module is missing; ask an admin for: apt-get install python3-venv" >&2
        exit 1
    fi
fi

# Servers run as other users: the venv must be readable by them (the default umask of root may not be).
umask 022
[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
# Built from a private copy of what the build reads: pip's build writes build/ and notebookd.egg-info
# into the source tree, and this checkout may be an admin's that the caller cannot (or should not) write.
src=$(mktemp -d "${TMPDIR:-/tmp}/notebookd-install.XXXXXX")
trap 'rm -rf "$src"' EXIT
trap 'exit 130' HUP INT TERM
cp -R "$here/pyproject.toml" "$here/README.md" "$here/notebookd" "$src/"
[ ! -e "$here/LICENSE" ] || cp "$here/LICENSE" "$src/"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$src[server]" ipykernel
rm -rf "$src"
mkdir -p "$bin"
ln -sf "$venv/bin/notebookd" "$bin/notebookd"

if [ "$(id -u)" -eq 0 ]; then
    if [ ! -e /etc/notebookd/notebookd.yaml ]; then
        install -D -m 0644 "$here/etc/notebookd/notebookd.yaml" /etc/notebookd/notebookd.yaml
        echo "installed /etc/notebookd/notebookd.yaml: list your users under 'users:' (or a group under 'groups:')"
    fi
    if [ -d /etc/systemd/system ]; then
        sed "s|/usr/bin/notebookd|$bin/notebookd|" "$here/units/notebookd.service" > /etc/systemd/system/notebookd.service
        # the per-user template of `backend: systemd` (unused, and harmless, with the other backends)
        install -m 0644 "$here/units/notebookd-user@.service" /etc/systemd/system/notebookd-user@.service
        install -m 0644 "$here/units/notebookd-user@.socket" /etc/systemd/system/notebookd-user@.socket
        systemctl daemon-reload 2>/dev/null || true
    fi
fi
echo "notebookd installed: $bin/notebookd ($("$venv/bin/notebookd" --version))"
if [ "$run" = yes ]; then
    exec "$venv/bin/notebookd" run
fi
