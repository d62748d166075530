//! `tlspeek correlate` with a real legacy caller: curl TLS 1.0 through a real tlspeek from
//! 127.0.0.7, joined with a Sysmon Event 3 record (wevtutil XML, saved as UTF-16 the way
//! PowerShell writes it) on its source port, with Winlogbeat JSON, and with the Graph
//! script's sign-in CSV on time and egress address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::Value;

fn sysmon(utc: &str, port: u64, image: &str, user: &str, pid: u32, proxy: u16) -> String {
    format!(
        "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name='Microsoft-Windows-Sysmon'/><EventID>3</EventID><TimeCreated SystemTime='{utc}Z'/><Computer>APP01</Computer></System><EventData><Data Name='UtcTime'>{utc}</Data><Data Name='ProcessId'>{pid}</Data><Data Name='Image'>{image}</Data><Data Name='User'>{user}</Data><Data Name='SourceIp'>127.0.0.7</Data><Data Name='SourcePort'>{port}</Data><Data Name='DestinationIp'>127.0.0.1</Data><Data Name='DestinationPort'>{proxy}</Data></EventData></Event>\n"
    )
}

fn utf16le(s: &str) -> Vec<u8> {
    let mut v = vec![0xff, 0xfe];
    v.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
    v
}

/// `ts` moved by `secs`, as `YYYY-MM-DD HH:MM:SS.mmm` (Sysmon) from an event's RFC 3339.
fn shifted(ts: &str, secs: i64) -> String {
    let t = humantime::parse_rfc3339(ts).unwrap();
    let t = if secs >= 0 {
        t + std::time::Duration::from_secs(secs as u64)
    } else {
        t - std::time::Duration::from_secs((-secs) as u64)
    };
    humantime::format_rfc3339_millis(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn correlate(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["correlate"];
    all.extend_from_slice(args);
    tlspeek_cmd(&all)
}

#[test]
fn a_legacy_caller_is_joined_with_its_process_and_its_sign_in() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    let mut args = vec!["--interface", "127.0.0.7"];
    args.extend_from_slice(TLS10_ONLY);
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &args).0, "200");
    let ev = t.wait_events("the legacy caller", |ev| {
        ev.iter()
            .any(|e| e["source_ip"] == "127.0.0.7" && e["legacy"] == true)
    });
    let e = ev
        .iter()
        .find(|e| e["source_ip"] == "127.0.0.7" && e["legacy"] == true)
        .unwrap();
    let ts = e["ts"].as_str().unwrap();
    let port = e["source_port"].as_u64().unwrap();
    // curl runs on this host: tlspeek names its process and user itself.
    assert_eq!(e["process"], "/usr/bin/curl", "{e}");
    assert_eq!(e["process_user"].as_str(), Some(whoami().as_str()), "{e}");
    assert!(e["process_pid"].as_u64().is_some_and(|p| p > 1), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let xml = dir.path().join("sysmon.xml");
    let records = sysmon(
        &shifted(ts, 0),
        port,
        r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
        r"CONTOSO\svc-sync",
        4242,
        t.proxy_port,
    ) + &sysmon(
        &shifted(ts, -3 * 3600),
        port,
        r"C:\Windows\explorer.exe",
        r"CONTOSO\someone",
        77,
        t.proxy_port,
    );
    std::fs::write(&xml, utf16le(&records)).unwrap();
    let ecs = dir.path().join("winlogbeat.json");
    let at = humantime::format_rfc3339_millis(humantime::parse_rfc3339(ts).unwrap()).to_string();
    std::fs::write(
        &ecs,
        format!("{{\"@timestamp\":\"{at}\",\"source\":{{\"ip\":\"127.0.0.7\",\"port\":{port}}},\"process\":{{\"executable\":\"C:\\\\svc\\\\sync.exe\",\"pid\":99}},\"user\":{{\"name\":\"svc-sync\",\"domain\":\"CONTOSO\"}},\"host\":{{\"name\":\"APP01\"}}}}\n"),
    )
    .unwrap();
    let sign_at = |secs: i64| {
        let t = humantime::parse_rfc3339(ts).unwrap() + std::time::Duration::from_secs(secs as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let csv = dir.path().join("NonInteractive_lowTls_tenant.csv");
    let header = "\"CorrelationId\",\"createdDateTime\",\"userPrincipalName\",\"userId\",\"UserDisplayName\",\"AppDisplayName\",\"AppId\",\"IPAddress\",\"isInteractive\",\"ResourceDisplayName\",\"ResourceId\",\"UserAgent\",\"ErrorCode\",\"FailureReason\",\"AdditionalDetails\"";
    let row = |when: String, upn: &str, ip: &str| {
        format!(
            "\"c\",\"{when}\",\"{upn}\",\"u\",\"n\",\"Azure Active Directory PowerShell\",\"a\",\"{ip}\",\"False\",\"r\",\"r\",\"\",\"1002016\",\"TLS\",\"\""
        )
    };
    std::fs::write(
        &csv,
        format!(
            "{header}\r\n{}\r\n{}\r\n{}\r\n",
            row(sign_at(2), "svc-sync@contoso.com", "203.0.113.7"),
            row(sign_at(7200), "nobody@contoso.com", "203.0.113.7"),
            row(sign_at(1), "other-site@contoso.com", "198.51.100.9")
        ),
    )
    .unwrap();
    // Security Event 5156 as Event Viewer's "Save as XML" writes it (an <Events> root).
    let wfp = dir.path().join("security-5156.xml");
    std::fs::write(
        &wfp,
        format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<Events><Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name='Microsoft-Windows-Security-Auditing'/><EventID>5156</EventID><TimeCreated SystemTime='{at}'/><Computer>APP01.contoso.com</Computer></System><EventData><Data Name='ProcessID'>5150</Data><Data Name='Application'>\\device\\harddiskvolume2\\legacy\\agent.exe</Data><Data Name='Direction'>%%14593</Data><Data Name='SourceAddress'>127.0.0.7</Data><Data Name='SourcePort'>{port}</Data><Data Name='DestAddress'>127.0.0.1</Data><Data Name='DestPort'>{}</Data><Data Name='Protocol'>6</Data></EventData></Event></Events>\r\n", t.proxy_port),
    )
    .unwrap();
    // Graph auditLogs/signIns JSON: one flagged legacy-TLS sign-in, one other.
    let graph = dir.path().join("signins.json");
    std::fs::write(
        &graph,
        format!(
            r#"{{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#auditLogs/signIns","value":[{{"createdDateTime":"{}","userPrincipalName":"graph@contoso.com","appDisplayName":"Legacy Agent","appId":"a1","ipAddress":"203.0.113.7","isInteractive":false,"status":{{"errorCode":1002016}},"authenticationProcessingDetails":[{{"key":"Legacy TLS (TLS 1.0, 1.1, 3DES)","value":"True"}}]}},{{"createdDateTime":"{}","userPrincipalName":"modern@contoso.com","ipAddress":"203.0.113.7","status":{{"errorCode":0}},"authenticationProcessingDetails":[]}}]}}"#,
            sign_at(3),
            sign_at(3)
        ),
    )
    .unwrap();
    let events = t.events_path.to_str().unwrap().to_string();
    let (code, out, err) = correlate(&[
        "--events",
        &events,
        "--sysmon",
        xml.to_str().unwrap(),
        "--sysmon",
        ecs.to_str().unwrap(),
        "--sysmon",
        wfp.to_str().unwrap(),
        "--signins",
        csv.to_str().unwrap(),
        "--signins",
        graph.to_str().unwrap(),
        "--egress-ip",
        "203.0.113.7",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let c = v["callers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source_ip"] == "127.0.0.7")
        .unwrap();
    let procs = c["processes"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["image"].as_str().unwrap().ends_with("powershell.exe")
                && p["user"] == r"CONTOSO\svc-sync"
                && p["pid"] == 4242
                && p["host"] == "APP01"),
        "{procs:#?}"
    );
    assert!(
        procs
            .iter()
            .any(|p| p["image"] == r"C:\svc\sync.exe" && p["user"] == r"CONTOSO\svc-sync"),
        "{procs:#?}"
    );
    assert!(
        procs.iter().any(
            |p| p["image"] == r"\device\harddiskvolume2\legacy\agent.exe"
                && p["pid"] == 5150
                && p["user"].is_null()
                && p["host"] == "APP01.contoso.com"
        ),
        "Security 5156: {procs:#?}"
    );
    assert!(
        !procs
            .iter()
            .any(|p| p["image"].as_str().unwrap().contains("explorer")),
        "hours earlier: not joined"
    );
    let sis = c["signins"].as_array().unwrap();
    let upns: Vec<&str> = sis
        .iter()
        .map(|s| s["user_principal_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        upns,
        ["svc-sync@contoso.com", "graph@contoso.com"],
        "{sis:#?}"
    );
    assert_eq!(
        (sis[0]["candidates"].as_u64(), sis[0]["rank"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(sis[0]["error_code"], "1002016");
    assert_eq!(
        (sis[1]["app"].as_str(), sis[1]["error_code"].as_str()),
        (Some("Legacy Agent"), Some("1002016")),
        "Graph JSON, flagged: {sis:#?}"
    );
    assert!(
        !out.contains("modern@contoso.com"),
        "not legacy: not listed"
    );
    let um = v["unmatched_signins"].to_string();
    assert!(
        um.contains("nobody@contoso.com") && um.contains("other-site@contoso.com"),
        "{um}"
    );
    assert_eq!(c["tls_library"], "openssl");

    // A damaged file: named, exit 1, the rest still joined; table and CSV render.
    let bad = dir.path().join("damaged.xml");
    std::fs::write(&bad, "<Event><System><EventID>3</Even").unwrap();
    let (code, out, err) = correlate(&[
        "--events",
        &events,
        "--sysmon",
        bad.to_str().unwrap(),
        "--sysmon",
        xml.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("damaged.xml"), "{err}");
    assert!(
        out.contains("process: C:\\Windows\\System32\\WindowsPowerShell"),
        "{out}"
    );
    let (code, out, _) = correlate(&[
        "--events",
        &events,
        "--sysmon",
        xml.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .ends_with("\"processes\",\"signins\""),
        "{out}"
    );
    // A binary .evtx file is read too (the sample's unreadable chunks are reported).
    let evtx = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/evtx/sysmon.evtx"
    );
    let (code, _, err) = correlate(&["--events", &events, "--sysmon", evtx]);
    assert_eq!(code, 1);
    assert_eq!(
        err.matches("sysmon.evtx: record ").count(),
        8,
        "each unreadable record by its position: {err}"
    );
    let (code, _, err) = correlate(&["--events", "/nonexistent/events.jsonl"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/events.jsonl"), "{err}");
    // The inventory keeps the recent legacy connections: the same join from it.
    let db = t.inventory_path();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, out, err) = correlate(&[
            "--db",
            db.to_str().unwrap(),
            "--sysmon",
            xml.to_str().unwrap(),
            "--format",
            "json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        let joined = v["callers"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["source_ip"] == "127.0.0.7"
                    && c["processes"].to_string().contains("powershell.exe")
            })
        });
        if joined {
            assert_eq!(code, 0, "{err}");
            assert!(!err.contains("cannot be joined"), "{err}");
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "not joined from the inventory: {out}\n{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The live inventory shows the local process; --write-db stores who the caller is
    // (the running proxy's inventory), and the report and /legacy(.csv) show it.
    let db_s = db.to_str().unwrap();
    let report = |extra: &[&str]| {
        let mut a = vec!["report", "--db", db_s, "--format", "json"];
        a.extend_from_slice(extra);
        let (code, out, err) = tlspeek_cmd(&a);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["source_ip"] == "127.0.0.7")
            .cloned()
            .unwrap_or_else(|| panic!("{out}"))
    };
    let live = report(&[]);
    assert_eq!(live["process"], "/usr/bin/curl", "{live}");
    let (code, _, err) = correlate(&[
        "--db",
        db_s,
        "--sysmon",
        xml.to_str().unwrap(),
        "--signins",
        csv.to_str().unwrap(),
        "--egress-ip",
        "203.0.113.7",
        "--write-db",
        db_s,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("stored for 1 callers already there, 0 added"),
        "{err}"
    );
    let row = report(&[]);
    assert_eq!(
        (
            row["process"].as_str(),
            row["process_user"].as_str(),
            row["account"].as_str(),
            row["app"].as_str()
        ),
        (
            Some(r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"),
            Some(r"CONTOSO\svc-sync"),
            Some("svc-sync@contoso.com"),
            Some("Azure Active Directory PowerShell")
        ),
        "{row}"
    );
    assert_eq!(
        row["connections"], live["connections"],
        "counts stay the proxy's"
    );
    let (status, csv_out) = t.admin_get("/legacy.csv");
    assert_eq!(status, 200);
    let header = csv_out.lines().next().unwrap();
    assert!(
        header.contains(",fix,process,process_user,account,app,"),
        "{header}"
    );
    let line = csv_out.lines().find(|l| l.contains("127.0.0.7")).unwrap();
    assert!(
        line.contains("svc-sync@contoso.com") && line.contains("powershell.exe"),
        "{line}"
    );
    let (status, json_out) = t.admin_get("/legacy");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&json_out).unwrap();
    let rows = v.as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["source_ip"] == "127.0.0.7"
            && r["account"] == "svc-sync@contoso.com"
            && r["process_user"] == r"CONTOSO\svc-sync"),
        "{json_out}"
    );
    let (_, table, _) = tlspeek_cmd(&["report", "--db", db_s]);
    assert!(
        table.contains("    account: svc-sync@contoso.com (app Azure Active Directory PowerShell)"),
        "{table}"
    );
    // Into a new file: the caller is added whole, with who it is.
    let fresh = dir.path().join("attributed.sqlite");
    let (code, _, err) = correlate(&[
        "--events",
        &events,
        "--sysmon",
        xml.to_str().unwrap(),
        "--write-db",
        fresh.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = tlspeek_cmd(&["report", "--db", fresh.to_str().unwrap(), "--format", "csv"]);
    assert!(
        out.contains("powershell.exe") && out.contains("127.0.0.7"),
        "{out}"
    );
}

fn whoami() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A legacy event line's time and source port, for the caller from `source`.
fn legacy_event(t: &Tlspeek, source: &str) -> (String, u64) {
    let ev = t.wait_events("the legacy caller", |ev| {
        ev.iter()
            .any(|e| e["source_ip"] == source && e["legacy"] == true)
    });
    let e = ev
        .iter()
        .find(|e| e["source_ip"] == source && e["legacy"] == true)
        .unwrap();
    (
        e["ts"].as_str().unwrap().to_string(),
        e["source_port"].as_u64().unwrap(),
    )
}

/// `ts` moved by `secs` (whole seconds, truncated), as the Japanese portal writes it:
/// `2026/12/01 9:14:07` (UTC).
fn ja_time(ts: &str, secs: i64) -> String {
    let s = shifted(ts, secs);
    let (date, time) = s.split_once(' ').unwrap();
    let time = time.split('.').next().unwrap();
    let (h, rest) = time.split_once(':').unwrap();
    format!(
        "{} {}:{rest}",
        date.replace('-', "/"),
        h.parse::<u32>().unwrap()
    )
}

const JA_HEADERS: [&str; 18] = [
    "日付 (UTC)",
    "要求 ID",
    "ユーザー エージェント",
    "相関 ID",
    "ユーザー ID",
    "ユーザー",
    "ユーザー名",
    "ユーザーの種類",
    "アプリケーション",
    "アプリケーション ID",
    "リソース",
    "リソース ID",
    "IP アドレス",
    "場所",
    "状態",
    "サインインのエラー コード",
    "失敗の理由",
    "クライアント アプリ",
];

fn ja_row(when: &str, upn: &str, code: &str) -> [String; 18] {
    [
        when,
        "r1",
        "",
        "corr-1",
        "u1",
        "サービス",
        upn,
        "Member",
        "Azure Active Directory PowerShell",
        "1b730954",
        "Windows Azure Active Directory",
        "res",
        "203.0.113.7",
        "\"Tokyo, JP\"",
        "失敗",
        code,
        "TLS",
        "Mobile Apps and Desktop clients",
    ]
    .map(str::to_string)
}

#[test]
fn japanese_portal_exports_and_two_callers_at_once() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(&format!("allowed_ports = [{up}]\n"), "");
    let mut args = vec!["--interface", "127.0.0.7"];
    args.extend_from_slice(TLS10_ONLY);
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &args).0, "200");
    let (ts7, _) = legacy_event(&t, "127.0.0.7");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    args[1] = "127.0.0.8";
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &args).0, "200");
    legacy_event(&t, "127.0.0.8");

    let dir = tempfile::tempdir().unwrap();
    // Japanese Excel's "CSV": CP932, commas. One legacy sign-in, one other error, one
    // damaged row.
    let lines = [
        JA_HEADERS.join(","),
        ja_row(&ja_time(&ts7, -5), "svc-ja@contoso.com", "1002016").join(","),
        ja_row(&ja_time(&ts7, -4), "fine@contoso.com", "50126").join(","),
        ja_row("壊れた日付", "lost@contoso.com", "1002016").join(","),
    ];
    let text = lines.join("\r\n") + "\r\n";
    let (cp932, _, unmappable) = encoding_rs::SHIFT_JIS.encode(&text);
    assert!(!unmappable);
    let ja = dir.path().join("NonInteractiveSignIns_ja.csv");
    std::fs::write(&ja, &cp932).unwrap();
    // Excel's "Unicode text": UTF-16 with a BOM, tabs.
    let tabbed = [
        JA_HEADERS.join("\t"),
        ja_row(&ja_time(&ts7, -5), "svc-utf16@contoso.com", "1002016").join("\t"),
    ]
    .join("\r\n");
    let u16 = dir.path().join("InteractiveSignIns_ja.txt");
    std::fs::write(&u16, utf16le(&tabbed)).unwrap();

    // Event lines large enough for progress on stderr: the proxy's own, then plain-HTTP
    // lines (not TLS: not callers).
    let big = dir.path().join("events.jsonl");
    let mut text = std::fs::read_to_string(&t.events_path).unwrap();
    let filler = format!(
        "{{\"kind\":\"http\",\"ts\":\"{ts7}\",\"source_ip\":\"127.0.0.9\",\"note\":\"{}\"}}\n",
        "x".repeat(200)
    );
    while text.len() < (9 << 20) {
        text.push_str(&filler);
    }
    std::fs::write(&big, text).unwrap();

    let (code, out, err) = correlate(&[
        "--events",
        big.to_str().unwrap(),
        "--signins",
        ja.to_str().unwrap(),
        "--signins",
        u16.to_str().unwrap(),
        "--egress-ip",
        "203.0.113.7",
        "--format",
        "json",
    ]);
    assert_eq!(code, 1, "a damaged row makes the exit code 1: {err}");
    assert!(
        err.contains("NonInteractiveSignIns_ja.csv: row 4: unreadable time"),
        "the damaged row by its position: {err}"
    );
    assert!(
        err.contains("reading event lines") && err.contains("legacy or watched connections"),
        "progress for a large input: {err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    let caller = |ip: &str| {
        v["callers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["source_ip"] == ip)
            .unwrap_or_else(|| panic!("no caller {ip}: {out}"))
            .clone()
    };
    let (c7, c8) = (caller("127.0.0.7"), caller("127.0.0.8"));
    for (c, rank) in [(&c7, 1), (&c8, 2)] {
        let sis = c["signins"].as_array().unwrap();
        let upns: Vec<&str> = sis
            .iter()
            .map(|s| s["user_principal_name"].as_str().unwrap())
            .collect();
        assert_eq!(
            upns,
            ["svc-ja@contoso.com", "svc-utf16@contoso.com"],
            "CP932 and UTF-16 rows, the 50126 row left out: {sis:#?}"
        );
        for s in sis {
            assert_eq!(s["candidates"], 2, "both callers were active: {s}");
            assert_eq!(s["rank"], rank, "ranked by time distance: {s}");
            assert_eq!(s["app"], "Azure Active Directory PowerShell");
            assert_eq!(s["correlation_id"], "corr-1");
            assert_eq!(s["resource"], "Windows Azure Active Directory");
        }
    }
    let d = |c: &Value| c["signins"][0]["time_distance_seconds"].as_f64().unwrap();
    assert!(d(&c7) >= 5.0 && d(&c8) >= d(&c7) + 1.0, "{c7} {c8}");
    assert!(!out.contains("lost@contoso.com") && !out.contains("fine@contoso.com"));
}

#[test]
fn a_captured_caller_is_joined_with_its_process() {
    if !require(&["curl", "openssl", "tcpdump"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("egress.pcap");
    let cap = Tcpdump::start(&pcap, &format!("tcp port {up}"));
    let local_port = free_port();
    let out = std::process::Command::new("curl")
        .args(["-sSk", "-m", "10", "--interface", "127.0.0.9"])
        .args(["--local-port", &local_port.to_string()])
        .args(["--resolve", &format!("{LOGIN}:{up}:127.0.0.1")])
        .args(TLS10_ONLY)
        .arg(format!("https://{LOGIN}:{up}/"))
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    cap.stop();
    let config = dir.path().join("analyze.toml");
    std::fs::write(&config, format!("[proxy]\nallowed_ports = [{up}]\n")).unwrap();
    let events = dir.path().join("captured.jsonl");
    let (code, _, err) = tlspeek_cmd(&[
        "analyze",
        pcap.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0, "{err}");
    let line = std::fs::read_to_string(&events).unwrap();
    let e: Value = line
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["source_port"] == local_port && e["legacy"] == true)
        .unwrap_or_else(|| panic!("no legacy line from port {local_port}: {line}"));
    let ts = e["ts"].as_str().unwrap();
    let xml = dir.path().join("sysmon.xml");
    let record = sysmon(
        &shifted(ts, 1),
        local_port.into(),
        r"C:\Program Files\Legacy\agent.exe",
        r"CONTOSO\svc-agent",
        5150,
        up,
    )
    .replace("127.0.0.7", "127.0.0.9");
    std::fs::write(&xml, record).unwrap();
    let (code, out, err) = correlate(&[
        "--events",
        events.to_str().unwrap(),
        "--sysmon",
        xml.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let c = v["callers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source_ip"] == "127.0.0.9")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        c["processes"][0]["image"],
        r"C:\Program Files\Legacy\agent.exe"
    );
    assert_eq!(c["processes"][0]["user"], r"CONTOSO\svc-agent");
    assert_eq!(c["processes"][0]["pid"], 5150);
}

#[test]
fn naming_local_processes_can_be_turned_off() {
    if !require(&["curl", "openssl"]) {
        return;
    }
    let (_srv, up) = openssl_server(&[]);
    let t = Tlspeek::start(
        &format!("allowed_ports = [{up}]\nname_local_processes = false\n"),
        "",
    );
    let mut args = vec!["--interface", "127.0.0.7"];
    args.extend_from_slice(TLS10_ONLY);
    assert_eq!(curl_via(t.proxy_port, up, LOGIN, &args).0, "200");
    let ev = t.wait_events("the legacy caller", |ev| {
        ev.iter().any(|e| e["source_ip"] == "127.0.0.7")
    });
    let e = ev.iter().find(|e| e["source_ip"] == "127.0.0.7").unwrap();
    assert!(e["process"].is_null() && e["process_user"].is_null(), "{e}");
    assert!(
        !t.metrics().contains("tlspeek_local_process_lookups_total{"),
        "no lookup when turned off"
    );
}
