#!/usr/bin/env sh
# Runs nginx in the foreground as a WebSocket relay for the benchmark's peer
# column: it listens on 127.0.0.1:PORT and forwards to the upstream.
# Usage: PEER_CMD='bench/peers/nginx.sh {port} {upstream} {dir}' bun run bench
# {upstream} is ws://HOST:PORT; {dir} is a scratch directory the benchmark
# removes afterwards. One worker and no master process, since the peer is
# pinned to one core.
set -eu
port=$1
upstream=${2#ws://}
upstream=${upstream%%/*}
dir=$3/nginx-$port
mkdir -p "$dir"
cat > "$dir/nginx.conf" <<CONFIG
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log stderr warn;

events {
    worker_connections 19500;
}

http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://$upstream;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
CONFIG
exec nginx -p "$dir" -c "$dir/nginx.conf"
