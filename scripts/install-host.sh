#!/bin/sh
# Installs peercache-host from this archive and registers it with the browsers.
#   ./install.sh            for you: ~/.local/bin, the browsers found for your user
#   sudo ./install.sh --system   for everyone: /usr/local/bin, system-wide registration
# Then it runs `peercache-host doctor`, which says what is left to do.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = "--system" ]; then
  dest=/usr/local/bin
  scope=--system
else
  dest="${HOME:?HOME is not set}/.local/bin"
  scope=
fi
mkdir -p "$dest"
cp "$here/peercache-host" "$dest/peercache-host.new"
chmod 755 "$dest/peercache-host.new"
mv "$dest/peercache-host.new" "$dest/peercache-host"
echo "installed $dest/peercache-host"
# shellcheck disable=SC2086
"$dest/peercache-host" install $scope
"$dest/peercache-host" doctor || true
