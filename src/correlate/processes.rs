//! Which process opened a connection, from Windows event logs: Sysmon Event ID 3
//! (NetworkConnect) and Security Event ID 5156 (Windows Filtering Platform permitted a
//! connection), as `wevtutil qe … /f:xml` or Event Viewer's "Save as XML" write them, or
//! as Winlogbeat/Elastic JSON lines (ECS fields). The format is read from the content.

use std::net::IpAddr;

use super::text::{DateOrder, parse_time};

/// One logged outbound connection and its process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessConn {
    /// Unix seconds.
    pub at: f64,
    pub source_ip: IpAddr,
    pub source_port: u16,
    pub image: String,
    pub user: Option<String>,
    pub pid: Option<u32>,
    pub host: Option<String>,
}

/// What one file gave: its connection events, and where it is damaged ("record 7: …",
/// "line 12: …"); damaged parts are skipped, the rest is kept.
#[derive(Debug, Default)]
pub struct Read {
    pub conns: Vec<ProcessConn>,
    pub damaged: Vec<String>,
}

/// Reads every connection event of one file's text. An error: the file is not a process
/// log at all.
pub fn parse(text: &str) -> Result<Read, String> {
    let t = text.trim_start();
    if t.starts_with('<') {
        Ok(parse_xml_events(t))
    } else if t.starts_with('{') {
        Ok(parse_ecs(t))
    } else if t.is_empty() {
        Ok(Read::default())
    } else {
        Err("neither event XML, an .evtx file nor Winlogbeat JSON lines".into())
    }
}

/// An `.evtx` file starts with this.
pub const EVTX_MAGIC: &[u8] = b"ElfFile\0";

/// Reads an `.evtx` file (as `wevtutil epl` or Event Viewer's "Save All Events As" write
/// it): its connection events, and each damaged record (skipped) by its position.
pub fn parse_evtx(bytes: Vec<u8>) -> Result<Read, String> {
    let settings = evtx::ParserSettings::new().num_threads(1);
    let mut parser = evtx::EvtxParser::from_buffer(bytes)
        .map_err(|e| format!("damaged EVTX file: {e}"))?
        .with_configuration(settings);
    let mut out = Read::default();
    for (i, record) in parser.records().enumerate() {
        match record
            .map_err(|e| e.to_string())
            .and_then(|r| parse_xml(&r.data))
        {
            Ok(conns) => out.conns.extend(conns),
            Err(e) => out.damaged.push(format!(
                "record {}: {}",
                i + 1,
                e.lines().next().unwrap_or("unreadable")
            )),
        }
    }
    Ok(out)
}

/// Event XML as a whole; when it does not parse, event by event, so that one damaged
/// `<Event>` loses only itself.
fn parse_xml_events(text: &str) -> Read {
    if let Ok(conns) = parse_xml(text) {
        return Read {
            conns,
            damaged: Vec::new(),
        };
    }
    let mut out = Read::default();
    let mut rest = text;
    let mut line = 1;
    let mut n = 0;
    while let Some(start) = find_event_start(rest) {
        line += rest[..start].matches('\n').count();
        let body = &rest[start..];
        let next = find_event_start(&body[1..]).map_or(body.len(), |i| i + 1);
        let one = &body[..next];
        n += 1;
        // Up to its own end tag: a closing `</Events>` after the last one is not its own.
        let own = one
            .rfind("</Event>")
            .map_or(one, |e| &one[..e + "</Event>".len()]);
        match parse_xml(own) {
            Ok(c) => out.conns.extend(c),
            Err(e) => out.damaged.push(format!("event {n} (line {line}): {e}")),
        }
        line += one.matches('\n').count();
        rest = &body[next..];
    }
    if n == 0 {
        out.damaged
            .push("line 1: damaged XML, no <Event> found".into());
    }
    out
}

/// Where the next `<Event>` or `<Event …>` element opens (not `<Events>`, `<EventData>`).
fn find_event_start(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("<Event") {
        let at = from + i;
        match s.as_bytes().get(at + 6) {
            Some(b'>' | b' ' | b'\t' | b'\r' | b'\n' | b'/') => return Some(at),
            _ => from = at + 6,
        }
    }
    None
}

fn parse_xml(text: &str) -> Result<Vec<ProcessConn>, String> {
    // wevtutil writes <Event> elements one after another, without a root: give them one.
    let body = text.trim_start_matches(|c| c != '<');
    let body = match body.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, r)| r),
        None => body,
    };
    let wrapped = format!("<Events>{body}</Events>");
    let doc = roxmltree::Document::parse(&wrapped).map_err(|e| format!("damaged XML: {e}"))?;
    let mut out = Vec::new();
    for ev in doc.descendants().filter(|n| n.tag_name().name() == "Event") {
        let child_text = |name: &str| {
            ev.descendants()
                .find(|n| n.tag_name().name() == name)
                .and_then(|n| n.text())
                .map(str::trim)
        };
        let data = |name: &str| {
            ev.descendants()
                .find(|n| n.tag_name().name() == "Data" && n.attribute("Name") == Some(name))
                .and_then(|n| n.text())
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let id = child_text("EventID");
        let created = ev
            .descendants()
            .find(|n| n.tag_name().name() == "TimeCreated")
            .and_then(|n| n.attribute("SystemTime"));
        let host = child_text("Computer").map(str::to_string);
        let conn = match id {
            Some("3") => (|| {
                Some(ProcessConn {
                    at: data("UtcTime")
                        .or(created)
                        .and_then(|t| parse_time(t, DateOrder::Mdy))?,
                    source_ip: data("SourceIp")?.parse().ok()?,
                    source_port: data("SourcePort")?.parse().ok()?,
                    image: data("Image")?.to_string(),
                    user: data("User").map(str::to_string),
                    pid: data("ProcessId").and_then(|p| p.parse().ok()),
                    host: host.clone(),
                })
            })(),
            Some("5156") => (|| {
                Some(ProcessConn {
                    at: created.and_then(|t| parse_time(t, DateOrder::Mdy))?,
                    source_ip: data("SourceAddress")?.parse().ok()?,
                    source_port: data("SourcePort")?.parse().ok()?,
                    image: data("Application")?.to_string(),
                    user: None,
                    pid: data("ProcessID").and_then(|p| p.parse().ok()),
                    host: host.clone(),
                })
            })(),
            _ => None,
        };
        out.extend(conn);
    }
    Ok(out)
}

fn parse_ecs(text: &str) -> Read {
    let mut out = Read::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                out.damaged
                    .push(format!("line {}: not a JSON object ({e})", i + 1));
                continue;
            }
        };
        let s = |path: &[&str]| {
            let mut cur = &v;
            for p in path {
                cur = cur.get(p)?;
            }
            match cur {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let conn = (|| {
            Some(ProcessConn {
                at: parse_time(&s(&["@timestamp"])?, DateOrder::Mdy)?,
                source_ip: s(&["source", "ip"])?.parse().ok()?,
                source_port: s(&["source", "port"])?.parse().ok()?,
                image: s(&["process", "executable"]).or_else(|| s(&["process", "name"]))?,
                user: s(&["user", "name"]).map(|u| match s(&["user", "domain"]) {
                    Some(d) if !u.contains('\\') => format!("{d}\\{u}"),
                    _ => u,
                }),
                pid: s(&["process", "pid"]).and_then(|p| p.parse().ok()),
                host: s(&["host", "name"]),
            })
        })();
        out.conns.extend(conn);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSMON: &str = "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><EventID>3</EventID><TimeCreated SystemTime='2026-12-01T09:14:07.100Z'/><Computer>APP01</Computer></System><EventData><Data Name='UtcTime'>2026-12-01 09:14:07.050</Data><Data Name='ProcessId'>4242</Data><Data Name='Image'>C:\\\\Windows\\\\powershell.exe</Data><Data Name='User'>CONTOSO\\\\svc</Data><Data Name='SourceIp'>10.0.0.7</Data><Data Name='SourcePort'>50123</Data></EventData></Event>";

    #[test]
    fn sysmon_5156_and_winlogbeat_give_the_same_fields() {
        let s = parse(&format!("{SYSMON}\n{SYSMON}")).unwrap().conns;
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].source_port, s[0].pid, s[0].host.as_deref()),
            (50123, Some(4242), Some("APP01"))
        );
        assert!(
            s[0].image.ends_with("powershell.exe")
                && s[0].user.as_deref() == Some("CONTOSO\\\\svc")
        );
        let wfp = "<Events><Event><System><EventID>5156</EventID><TimeCreated SystemTime='2026-12-01T09:14:07Z'/><Computer>APP02</Computer></System><EventData><Data Name='ProcessID'>88</Data><Data Name='Application'>\\\\device\\\\harddiskvolume2\\\\app.exe</Data><Data Name='SourceAddress'>10.0.0.8</Data><Data Name='SourcePort'>4000</Data></EventData></Event></Events>";
        let w = parse(wfp).unwrap().conns;
        assert_eq!(
            (w[0].pid, w[0].source_port, w[0].user.clone()),
            (Some(88), 4000, None)
        );
        let ecs = r#"{"@timestamp":"2026-12-01T09:14:07.000Z","source":{"ip":"10.0.0.9","port":4001},"process":{"executable":"C:\\java.exe","pid":7},"user":{"name":"svc","domain":"CONTOSO"},"host":{"name":"APP03"}}"#;
        let e = parse(ecs).unwrap().conns;
        assert_eq!(
            (e[0].pid, e[0].user.as_deref(), e[0].host.as_deref()),
            (Some(7), Some("CONTOSO\\svc"), Some("APP03"))
        );
        assert_eq!(
            parse("<Event><System><EventID>3</Even")
                .unwrap()
                .damaged
                .len(),
            1
        );
        assert!(parse("garbage").is_err());
        // One damaged event or line loses only itself, and says where it is.
        let broken = format!("{SYSMON}\n<Event><System><EventID>3</Even\n{SYSMON}\n");
        let r = parse(&broken).unwrap();
        assert_eq!(r.conns.len(), 2);
        assert_eq!(r.damaged.len(), 1);
        assert!(
            r.damaged[0].starts_with("event 2 (line 2)"),
            "{:?}",
            r.damaged
        );
        let r = parse(&format!("{ecs}\n{{not json\n{ecs}\n")).unwrap();
        assert_eq!((r.conns.len(), r.damaged.len()), (2, 1));
        assert!(r.damaged[0].starts_with("line 2:"), "{:?}", r.damaged);
    }
}

#[cfg(test)]
mod evtx_tests {
    use super::*;

    #[test]
    fn a_real_sysmon_evtx_file_gives_its_network_connections() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/evtx/sysmon.evtx"
        ))
        .unwrap();
        let r = parse_evtx(bytes).unwrap();
        let conns = r.conns;
        // The sample has two network connections; its last chunks are not readable.
        assert_eq!((conns.len(), r.damaged.len()), (2, 8));
        assert!(
            r.damaged.iter().all(|d| d.starts_with("record ")),
            "{:?}",
            r.damaged
        );
        assert_eq!((conns[0].source_port, conns[0].pid), (59344, Some(4280)));
        assert_eq!(conns[0].user.as_deref(), Some("NT AUTHORITY\\SYSTEM"));
        assert!(
            conns
                .iter()
                .all(|c| !c.image.is_empty() && c.source_port > 0 && c.at > 1.0e9)
        );
        assert!(parse_evtx(b"ElfFile\0garbage".to_vec()).is_err());
    }
}
