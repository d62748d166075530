# Shared by benches/instructions.sh and benches/transparent.sh (sourced, not run): the
# nginx TLS upstream both measure against, the benchmark config of tlspeek in front of it,
# and the wait for a listener.

# wait_port PORT: until something accepts on 127.0.0.1:PORT (60 s at most: tlspeek
# starts slowly under callgrind).
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# nginx_upstream DIR PORT: a self-signed P-256 certificate for localhost and an nginx
# config in DIR (TLS 1.2/1.3, no session tickets, `GET /` answers "ok"), listening on
# 127.0.0.1:PORT in the foreground; writes DIR/nginx.conf (start it with
# `nginx -c DIR/nginx.conf`).
nginx_upstream() {
  local dir=$1 port=$2
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
  chmod 644 "$dir/key.pem" "$dir/cert.pem"
  cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate $dir/cert.pem;
    ssl_certificate_key $dir/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    location = / { return 200 "ok\n"; }
  }
}
CONF
}

# tlspeek_config DIR PROXY_PORT ADMIN_PORT UPSTREAM_PORT [PROXY_LINES] [TABLES]: writes
# DIR/tlspeek.toml, the benchmark config: CONNECT on PROXY_PORT to UPSTREAM_PORT only, no
# deny list (the upstream is on 127.0.0.1), local process naming off, events and the
# inventory in DIR. PROXY_LINES go into [proxy]; TABLES (whole tables) before [admin].
tlspeek_config() {
  local dir=$1 proxy_port=$2 admin_port=$3 upstream_port=$4 proxy_lines=${5:-} tables=${6:-}
  {
    printf '[proxy]\nlisten = "127.0.0.1:%s"\ndeny_destinations = []\nallowed_ports = [%s]\n' \
      "$proxy_port" "$upstream_port"
    if [ -n "$proxy_lines" ]; then printf '%s\n' "$proxy_lines"; fi
    printf 'name_local_processes = false\n'
    if [ -n "$tables" ]; then printf '%s\n' "$tables"; fi
    printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$admin_port"
    printf '[events]\npath = "%s/events.jsonl"\n[inventory]\npath = "%s/inventory.sqlite"\n' \
      "$dir" "$dir"
  } >"$dir/tlspeek.toml"
}
