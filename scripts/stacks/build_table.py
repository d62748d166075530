#!/usr/bin/env python3
"""Writes config/tls_stacks.tsv, the labelled real hellos the tls_library classifier
compares against, from two sources:

1. Cisco Mercury's TLS fingerprint database (github.com/cisco/mercury,
   resources/fingerprint_db.json.gz at commit bca7418d, 2020-09-08; BSD-3-Clause, notice
   kept in the table's header): real ClientHellos recorded on enterprise endpoints, each
   with the processes that sent it and their OS. A fingerprint is labelled only when at
   least 90% of its connections come from processes whose TLS library is certain (the
   PROCESSES map below); the others are left out.
2. tests/fixtures/stacks/ (scripts/stacks/capture.sh): hellos generated here by running
   each library, labelled by the library that made them.

usage: git -C MERCURY show bca7418d:resources/fingerprint_db.json.gz > db.json.gz
       scripts/stacks/build_table.py db.json.gz > config/tls_stacks.tsv
"""

import collections
import gzip
import json
import os
import re
import sys

# Processes whose TLS library is known for certain. Left out on purpose: svchost.exe and
# other hosts of many stacks, Office apps that embed Chromium, wget (GnuTLS on Debian,
# OpenSSL elsewhere), curl on macOS (SecureTransport in older releases).
PROCESSES = {
    "schannel": ["iexplore.exe", "outlook.exe", "microsoftedgecp.exe", "microsoftedge.exe",
                 "onedrive.exe", "lync.exe", "communicator.exe", "searchui.exe"],
    "java": ["java.exe", "javaw.exe", "jp2launcher.exe", "java"],
    "nss": ["firefox", "firefox.exe", "thunderbird", "thunderbird.exe"],
    "boringssl": ["chrome.exe", "google chrome helper", "google chrome", "chromium", "msedge.exe"],
    "securetransport": ["com.apple.webkit.networking", "nsurlsessiond", "com.apple.geod",
                        "locationd", "assistantd", "mail", "safari"],
    "openssl": ["openssl", "openssl.darwin.x86_64", "python", "python3", "python3.7",
                "python3.8", "python.exe", "python2.7", "php", "curl"],
    "go": ["kubectl", "kubectl.exe", "helm", "terraform", "syncthing", "consul", "go", "docker"],
}
# Libraries that never send GREASE values (RFC 8701) in the versions this data holds.
NO_GREASE = {"schannel", "java", "openssl", "nss", "go"}
LIBRARY_OF = {p: lib for lib, ps in PROCESSES.items() for p in ps}
MERCURY = "cisco/mercury resources/fingerprint_db.json.gz @ bca7418d (2020-09-08)"
NOTICE = """# Entries from source "mercury" are derived from Cisco Mercury's fingerprint database:
#   Copyright (c) 2019-2023 Cisco Systems, Inc. All rights reserved.
#   Redistribution and use in source and binary forms, with or without modification, are
#   permitted provided that the following conditions are met: Redistributions of source
#   code must retain the above copyright notice, this list of conditions and the following
#   disclaimer. Redistributions in binary form must reproduce the above copyright notice,
#   this list of conditions and the following disclaimer in the documentation and/or other
#   materials provided with the distribution. Neither the name of the Cisco Systems, Inc.
#   nor the names of its contributors may be used to endorse or promote products derived
#   from this software without specific prior written permission.
#   THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY
#   EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF
#   MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL
#   THE COPYRIGHT HOLDERS OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL,
#   SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO,
#   PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
#   INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT,
#   STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF
#   THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."""


def grease(v):
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def hexes(values):
    return ",".join("gg" if grease(v) else "%04x" % v for v in values) or "-"


def u16s(hexstr):
    return [int(hexstr[i:i + 4], 16) for i in range(0, len(hexstr) - 3, 4)]


def max_version(legacy, versions):
    vs = [v for v in versions if not grease(v)]
    return max(vs) if vs else legacy


def from_mercury(str_repr):
    """(max_version, ciphers, extensions, groups, sig_algs) of a Mercury `str_repr`."""
    m = re.match(r"^\(([0-9a-f]{4})\)\(([0-9a-f]*)\)\((.*)\)$", str_repr)
    if not m:
        return None
    exts, groups, sigs, versions = [], [], [], []
    for e in re.findall(r"\(([0-9a-f]+)\)", m.group(3)):
        t = int(e[:4], 16)
        exts.append(t)
        data = e[8:]
        if t == 0x000A:
            groups = u16s(data[4:])
        elif t == 0x000D:
            sigs = u16s(data[4:])
        elif t == 0x002B:
            versions = u16s(data[2:])
    return max_version(int(m.group(1), 16), versions), u16s(m.group(2)), exts, groups, sigs


def from_bytes(buf):
    """The same fields of a recorded first flight (TLS records, one ClientHello)."""
    payload, off = b"", 0
    while off + 5 <= len(buf) and buf[off] == 0x16:
        n = int.from_bytes(buf[off + 3:off + 5], "big")
        payload += buf[off + 5:off + 5 + n]
        off += 5 + n
    b = payload[4:]
    legacy = int.from_bytes(b[0:2], "big")
    p = 2 + 32
    p += 1 + b[p]
    n = int.from_bytes(b[p:p + 2], "big")
    ciphers = u16s(b[p + 2:p + 2 + n].hex())
    p += 2 + n
    p += 1 + b[p]
    exts, groups, sigs, versions = [], [], [], []
    if p + 2 <= len(b):
        end = p + 2 + int.from_bytes(b[p:p + 2], "big")
        p += 2
        while p + 4 <= end:
            t, n = int.from_bytes(b[p:p + 2], "big"), int.from_bytes(b[p + 2:p + 4], "big")
            d = b[p + 4:p + 4 + n]
            exts.append(t)
            if t == 0x000A:
                groups = u16s(d[2:].hex())
            elif t == 0x000D:
                sigs = u16s(d[2:].hex())
            elif t == 0x002B:
                versions = u16s(d[1:].hex())
            p += 4 + n
    return max_version(legacy, versions), ciphers, exts, groups, sigs


def os_name(os_info):
    """'Windows 7' from '(WinNT)(Windows 7 Enterprise)(6.1.7601)', 'macOS' from Darwin."""
    if not os_info:
        return None
    top = max(os_info.items(), key=lambda kv: kv[1])[0]
    parts = re.findall(r"\(([^)]*)\)", top)
    if len(parts) >= 2 and parts[0] == "WinNT":
        return re.sub(r" (Enterprise|Professional|Pro|Home|Ultimate|Standard|Datacenter|Business).*$", "", parts[1])
    if parts and parts[0] == "Darwin":
        return "macOS"
    return parts[0] if parts else None


def row(lib, software, source, fields):
    mv, ciphers, exts, groups, sigs = fields
    exts = [e for e in exts if e != 0x0015]  # padding: the hello's length, not the library
    return "\t".join([lib, software, source, "%04x" % mv, hexes(ciphers), hexes(exts), hexes(groups), hexes(sigs)])


def mercury_rows(path):
    rows = []
    with gzip.open(path, "rt") as f:
        for line in f:
            d = json.loads(line)
            procs = d.get("process_info") or []
            total = sum(p["count"] for p in procs)
            by_lib = collections.Counter()
            for p in procs:
                name = p["process"].lower()
                lib = LIBRARY_OF.get(name)
                if name == "curl" and any("Darwin" in o for o in p.get("os_info", {})):
                    lib = None
                by_lib[lib] += p["count"]
            if not by_lib:
                continue
            lib, count = by_lib.most_common(1)[0]
            if lib is None or count < 0.9 * total:
                continue
            top = max((p for p in procs if LIBRARY_OF.get(p["process"].lower()) == lib), key=lambda p: p["count"])
            fields = from_mercury(d["str_repr"])
            if fields is None:
                continue
            # GREASE from a process whose library never sends it is an embedded Chromium
            # (WebView2, CEF in Outlook, Skype for Business): a wrong label, left out.
            if lib in NO_GREASE and any(grease(v) for v in fields[1] + fields[2]):
                continue
            # SChannel signals secure renegotiation with the renegotiation_info extension,
            # never the 0x00ff SCSV, and has no heartbeat extension: an "SChannel" process
            # whose hello has either carries another stack (an OpenSSL-based add-in).
            if lib == "schannel" and (0x00FF in fields[1] or 0x000F in fields[2]):
                continue
            osn = os_name(top.get("os_info"))
            software = top["process"] + (" on " + osn if osn else "")
            rows.append(row(lib, software, "mercury:" + top["process"], fields))
    return rows


def generated_rows(root):
    d = os.path.join(root, "tests", "fixtures", "stacks")
    rows = []
    with open(os.path.join(d, "manifest.tsv")) as f:
        next(f)
        for line in f:
            file, lib, software, _prov = line.rstrip("\n").split("\t")
            with open(os.path.join(d, file), "rb") as b:
                rows.append(row(lib, software, "here:" + file, from_bytes(b.read())))
    return rows


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    merc = mercury_rows(sys.argv[1])
    here = generated_rows(root)
    print("# Labelled real ClientHellos, the knowledge of the tls_library classifier")
    print("# (src/inventory/stacks.rs). Written by scripts/stacks/build_table.py; do not edit by")
    print("# hand: add hellos to tests/fixtures/stacks/ (scripts/stacks/capture.sh) and rebuild.")
    print("# source: mercury:<process> = " + MERCURY + ";")
    print("#         here:<file> = tests/fixtures/stacks/<file>, provenance in its manifest.tsv.")
    print("# Columns: library, software, source, highest offered version, ciphers, extensions,")
    print("# groups, signature algorithms (hex, in the order sent; gg = a GREASE value).")
    print(NOTICE)
    print("library\tsoftware\tsource\tmax_version\tciphers\textensions\tgroups\tsig_algs")
    for r in merc + here:
        print(r)


if __name__ == "__main__":
    main()
