#!/usr/bin/env bash
# Records real ClientHellos of the TLS libraries installed here, with several version pins
# and cipher settings each, into tests/fixtures/stacks/ (one .bin per hello) and its
# manifest.tsv (file, tls_library, software, provenance). Re-runnable; 127.0.0.1 only.
#
# usage: scripts/stacks/capture.sh
# Needs: openssl, curl, python3, node, gnutls-cli, java (JDK 11+), go, tstclnt
# (libnss3-tools), cargo. A missing tool is reported and its hellos are skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/tests/fixtures/stacks"
mkdir -p "$out"
manifest="$out/manifest.tsv"
printf 'file\ttls_library\tsoftware\tprovenance\n' > "$manifest.new"
port=47443
sni=login.microsoftonline.com
today=$(date -u +%Y-%m-%d)
seclevel0="$(mktemp)"
printf 'openssl_conf = o\n[o]\nssl_conf = s\n[s]\nsystem_default = d\n[d]\nCipherString = DEFAULT:@SECLEVEL=0\nMinProtocol = TLSv1\n' > "$seclevel0"
javasec="$(mktemp)"
printf 'jdk.tls.disabledAlgorithms=\n' > "$javasec"
trap 'rm -f "$seclevel0" "$javasec"' EXIT

# cap FILE LIBRARY SOFTWARE PROVENANCE CMD...: runs CMD (PORT in it is replaced) against
# the sink and records the hello.
cap() {
  local file=$1 lib=$2 soft=$3 prov=$4
  shift 4
  local args=("${@//PORT/$port}")
  python3 "$here/sink.py" "$port" "$out/$file.bin" 15 & local sink=$!
  for _ in $(seq 50); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
  timeout 20 "${args[@]}" > /dev/null 2>&1 < /dev/null || true
  if wait "$sink"; then
    printf '%s.bin\t%s\t%s\t%s\n' "$file" "$lib" "$soft" "generated here ($today) from $prov" >> "$manifest.new"
  else
    echo "no hello from: ${args[*]}" >&2
    rm -f "$out/$file.bin"
  fi
}
have() { command -v "$1" > /dev/null || { echo "missing: $1 (its hellos are skipped)" >&2; return 1; }; }

if have openssl; then
  v=$(openssl version | cut -d' ' -f1-2)
  for pin in "" -tls1 -tls1_1 -tls1_2 -tls1_3 -no_tls1_3; do
    for c in "" "AES128-SHA:DES-CBC3-SHA" "ECDHE-RSA-AES128-GCM-SHA256:AES256-SHA"; do
      name="openssl${pin//-/_}_$(echo "${c:-default}" | tr -c 'a-zA-Z0-9\n' '_' | cut -c1-24)"
      cargs=(); [ -n "$c" ] && cargs=(-cipher "$c:@SECLEVEL=0")
      [ "$pin" = -tls1_3 ] && [ -n "$c" ] && continue
      cap "$name" openssl "$v s_client" "$v" env OPENSSL_CONF="$seclevel0" openssl s_client -connect 127.0.0.1:PORT -servername $sni $pin "${cargs[@]}"
    done
  done
  cap openssl_no_ticket_alpn openssl "$v s_client" "$v" openssl s_client -connect 127.0.0.1:PORT -servername $sni -no_ticket -alpn h2,http/1.1
fi
if have curl; then
  v=$(curl --version | head -1 | cut -d' ' -f1-2,5)
  cap curl_default openssl "$v" "$v" curl -sk https://$sni:PORT/ --resolve $sni:PORT:127.0.0.1
  for m in 1.0 1.1 1.2; do
    cap "curl_max_${m/./}" openssl "$v" "$v" env OPENSSL_CONF="$seclevel0" curl -sk --tlsv1.0 --tls-max $m --ciphers 'DEFAULT:@SECLEVEL=0' https://$sni:PORT/ --resolve $sni:PORT:127.0.0.1
  done
  cap curl_http11 openssl "$v" "$v" curl -sk --http1.1 https://$sni:PORT/ --resolve $sni:PORT:127.0.0.1
fi
if have python3; then
  v="Python $(python3 -c 'import sys,ssl;print(sys.version.split()[0], ssl.OPENSSL_VERSION)')"
  for mx in TLSv1 TLSv1_1 TLSv1_2 TLSv1_3; do
    cap "python_max_$mx" openssl "$v" "$v" env OPENSSL_CONF="$seclevel0" python3 -c "
import socket,ssl
c=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT);c.check_hostname=False;c.verify_mode=ssl.CERT_NONE
c.set_ciphers('DEFAULT:@SECLEVEL=0');c.minimum_version=ssl.TLSVersion.TLSv1;c.maximum_version=ssl.TLSVersion.$mx
s=socket.create_connection(('127.0.0.1',PORT));s.settimeout(3)
try: c.wrap_socket(s,server_hostname='$sni')
except Exception: pass"
  done
fi
if have node; then
  v="Node.js $(node -v) (OpenSSL $(node -p process.versions.openssl))"
  for mx in TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; do
    cap "node_max_${mx//./}" openssl "$v" "$v" node -e "
const tls=require('tls');const s=tls.connect({host:'127.0.0.1',port:PORT,servername:'$sni',minVersion:'TLSv1',maxVersion:'$mx',ciphers:'DEFAULT:@SECLEVEL=0',rejectUnauthorized:false});
s.on('error',()=>{});setTimeout(()=>process.exit(0),2000);"
  done
fi
if have gnutls-cli; then
  v="GnuTLS $(gnutls-cli --version | head -1 | awk '{print $NF}')"
  for p in NORMAL "NORMAL:-VERS-ALL:+VERS-TLS1.0" "NORMAL:-VERS-ALL:+VERS-TLS1.1" "NORMAL:-VERS-TLS1.3" \
           "NORMAL:-CIPHER-ALL:+3DES-CBC:-VERS-TLS1.3" "SECURE128" "PERFORMANCE:%NO_TICKETS" "NORMAL:-VERS-ALL:+VERS-TLS1.3"; do
    name="gnutls_$(echo "$p" | tr -c 'a-zA-Z0-9\n' '_' | cut -c1-40)"
    cap "$name" gnutls "$v gnutls-cli" "$v" gnutls-cli --insecure --priority "$p" --sni-hostname $sni -p PORT 127.0.0.1
  done
fi
if have java; then
  v="$(java -version 2>&1 | head -1 | tr -d '"')"
  for p in "" TLSv1 TLSv1.1 TLSv1.2 TLSv1.3 "TLSv1,TLSv1.1,TLSv1.2"; do
    name="java_${p:-default}"; name=${name//[.,]/_}
    pargs=(); [ -n "$p" ] && pargs=("-Djdk.tls.client.protocols=$p")
    cap "$name" java "$v JSSE" "$v" java -Djava.security.properties="$javasec" "${pargs[@]}" "$here/Hello.java" PORT
  done
fi
if have go; then
  v="$(go version | cut -d' ' -f3)"
  for mm in "10 10" "10 11" "10 12" "12 12" "12 13" "13 13"; do
    set -- $mm
    cap "go_${1}_${2}" go "Go $v crypto/tls" "Go $v" go run "$here/hello.go" PORT "$1" "$2"
  done
fi
if have tstclnt; then
  v="NSS $(dpkg-query -W -f '${Version}' libnss3 2>/dev/null || echo '?')"
  for r in "" ssl3:tls1.0 tls1.0:tls1.1 tls1.0:tls1.2 tls1.2:tls1.3 tls1.3:tls1.3; do
    name="nss_${r:-default}"; name=${name//[.:]/_}
    rargs=(); [ -n "$r" ] && rargs=(-V "$r")
    cap "$name" nss "$v tstclnt" "$v" tstclnt -D -h 127.0.0.1 -p PORT -a $sni -o "${rargs[@]}"
  done
fi
if have cargo; then
  (cd "$root" && cargo build -q --example rustls_hello)
  v="rustls $(cd "$root" && cargo tree -q -i rustls --depth 0 2>/dev/null | head -1 | awk '{print $2}')"
  for m in both 1.2 1.3; do
    cap "rustls_$m" rustls "$v" "$v" "$root/target/debug/examples/rustls_hello" PORT "$m"
  done
fi
mv "$manifest.new" "$manifest"
echo "$(($(wc -l < "$manifest") - 1)) hellos in $manifest"
