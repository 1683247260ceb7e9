#!/usr/bin/env bash
# The main job in one command: build, start ftpd on a copy of the demo root, move a real file
# both ways with ftp-cli and check it, then (on a terminal) open the ftp-cli shell. The daemon
# is stopped when this script exits, however it exits.
set -euo pipefail
cd "$(dirname "$0")"

cargo build --release --quiet --bin ftpd --bin ftp-cli
bin=target/release
root=target/demo-root
work=target/demo-client
# The daemon keeps its private state beside the root, in target/.demo-root.ftpd-state.
rm -rf "$root" "$work" target/.demo-root.ftpd-state
mkdir -p "$root" "$work"
cp -R demo/root/. "$root/"

log=$(mktemp)
"$bin/ftpd" --root "$root" --listen 127.0.0.1:0 2>"$log" &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -f "$log"' EXIT

# Wait for the daemon to say where it listens (it binds a free port).
addr=
for _ in $(seq 100); do
    addr=$(grep -o 'listening on [^ ]*' "$log" | awk '{print $3}' || true)
    [ -n "$addr" ] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "ftpd did not start:"; cat "$log"; exit 1; }
echo "ftpd is serving $root on $addr"

# Every connection is TLS. The script trusts exactly the key the daemon made at its first start,
# as `ftpd --fingerprint` prints it.
fingerprint=$("$bin/ftpd" --root "$root" --fingerprint)
echo "its key's fingerprint is $fingerprint"

# A real transfer: 32 MiB of random bytes up and back down, compared byte for byte.
head -c $((32 * 1024 * 1024)) /dev/urandom >"$work/sample.bin"
(cd "$work" && "../../$bin/ftp-cli" "$addr" --fingerprint "$fingerprint" \
    -c "put sample.bin; get sample.bin sample.back; get WELCOME.txt")
cmp "$work/sample.bin" "$work/sample.back"
echo "round trip OK: $work/sample.back is identical to $work/sample.bin"

if [ -t 0 ] && [ -t 1 ]; then
    echo "Opening the ftp-cli shell (type help; Ctrl-D or quit to leave, which stops the daemon)."
    echo "It asks you to trust the server's key first: compare it with the fingerprint above."
    # A known_hosts of the demo's own: the demo's port changes every run.
    (cd "$work" && "../../$bin/ftp-cli" "$addr" --known-hosts known_hosts)
fi
