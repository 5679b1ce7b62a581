#!/usr/bin/env sh
# Runs HAProxy in the foreground as a WebSocket relay for the benchmark's
# peer column: it listens on 127.0.0.1:PORT and forwards to the upstream.
# Usage: PEER_CMD='bench/peers/haproxy.sh {port} {upstream} {dir}' bun run bench
# {upstream} is ws://HOST:PORT; {dir} is a scratch directory the benchmark
# removes afterwards. One thread, since the peer is pinned to one core.
set -eu
port=$1
upstream=${2#ws://}
upstream=${upstream%%/*}
dir=$3
config="$dir/haproxy-$port.cfg"
cat > "$config" <<CONFIG
global
    nbthread 1
    maxconn 9600
    fd-hard-limit 20000

defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

frontend relay
    bind 127.0.0.1:$port
    default_backend upstream

backend upstream
    server upstream $upstream
CONFIG
exec haproxy -db -f "$config"
