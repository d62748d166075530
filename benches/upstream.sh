# Shared by benches/instructions.sh and benches/transparent.sh (sourced, not run): the
# nginx TLS upstream both measure against, and the wait for a listener.

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
