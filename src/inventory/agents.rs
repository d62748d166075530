//! What a source's plain-HTTP User-Agents say about the host behind it. Windows fetches
//! CRLs, OCSP answers and updates over http:// with User-Agents that name its version
//! (`Microsoft-CryptoAPI/6.1` is Windows 7 / Server 2008 R2), and scripts name their
//! runtime (`Java/1.8.0_151`, `Python-urllib/2.7`, `WindowsPowerShell/5.1`). Seen on the
//! proxy's http:// path and in upgrade mode, kept per source (bounded) in the inventory,
//! and shown per caller as `source_os` and `source_runtime`. They refine the fix, never
//! the `tls_library`: an SChannel hello from a Windows 7 source gets the Windows 7 fix; an
//! OpenSSL hello from a Windows source keeps the OpenSSL fix, with the host noted. Pure.

use serde::Serialize;

/// User-Agents kept per source at most (the most recently seen).
pub const MAX_PER_SOURCE: usize = 8;
/// Sources kept at most (the least recently seen go first).
pub const MAX_SOURCES: usize = 100_000;
/// The longest User-Agent kept, in characters.
pub const MAX_LEN: usize = 256;

/// One User-Agent a source sent, and when it was last seen (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenAgent {
    pub user_agent: String,
    pub seen: i64,
}

/// `source_os` / `source_runtime` of a report row: the name, and its evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Named {
    pub name: String,
    pub user_agent: String,
    /// RFC 3339 UTC.
    pub seen: String,
}

/// A User-Agent as kept: printable, no query string, capped.
pub fn clean(ua: &str) -> String {
    ua.split('?')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LEN)
        .collect()
}

/// `major.minor` of the text after `prefix` (up to the next space).
fn version_after<'a>(ua: &'a str, prefix: &str) -> Option<&'a str> {
    let at = ua.find(prefix)? + prefix.len();
    let rest = ua.get(at..)?;
    Some(rest.split([' ', ';', ')']).next().unwrap_or(rest))
}

fn windows_by_nt(nt: &str) -> Option<&'static str> {
    let mut parts = nt.split('.');
    let (major, minor) = (parts.next()?, parts.next().unwrap_or("0"));
    Some(match (major, minor) {
        ("5", "1") => "Windows XP",
        ("5", "2") => "Windows XP x64 / Server 2003",
        ("6", "0") => "Windows Vista / Server 2008",
        ("6", "1") => "Windows 7 / Server 2008 R2",
        ("6", "2") => "Windows 8 / Server 2012",
        ("6", "3") => "Windows 8.1 / Server 2012 R2",
        ("10", _) => "Windows 10 / Server 2016 or later",
        _ => return None,
    })
}

/// Windows by build number (Windows Update Agent's version is `x.y.BUILD.z`).
fn windows_by_build(build: u32) -> Option<&'static str> {
    Some(match build {
        2600 => "Windows XP",
        3790 => "Windows XP x64 / Server 2003",
        6000..=6003 => "Windows Vista / Server 2008",
        7600 | 7601 => "Windows 7 / Server 2008 R2",
        9200 => "Windows 8 / Server 2012",
        9600 => "Windows 8.1 / Server 2012 R2",
        10240.. => "Windows 10 / Server 2016 or later",
        _ => return None,
    })
}

/// The OS a User-Agent names, if it names one.
pub fn os_of(ua: &str) -> Option<&'static str> {
    if let Some(v) = version_after(ua, "Microsoft-CryptoAPI/") {
        return windows_by_nt(v);
    }
    if let Some(v) = version_after(ua, "Windows-Update-Agent/") {
        let build = v.split('.').nth(2)?.parse().ok()?;
        return windows_by_build(build);
    }
    if ua.contains("Microsoft-Delivery-Optimization/") {
        return Some("Windows 10 / Server 2016 or later");
    }
    if let Some(v) = version_after(ua, "Windows NT ") {
        return windows_by_nt(v);
    }
    None
}

/// The runtime or tool a User-Agent names, if it names one.
pub fn runtime_of(ua: &str) -> Option<String> {
    let named = |prefix: &str, name: &str| version_after(ua, prefix).map(|v| format!("{name} {v}"));
    if let Some(v) = version_after(ua, "Java/") {
        let major = match v.strip_prefix("1.") {
            Some(rest) => rest.split('.').next().unwrap_or(rest),
            None => v.split('.').next().unwrap_or(v),
        };
        return Some(format!("Java {major} ({v})"));
    }
    named("WindowsPowerShell/", "Windows PowerShell")
        .or_else(|| named("PowerShell/", "PowerShell"))
        .or_else(|| named("Python-urllib/", "Python urllib"))
        .or_else(|| named("python-requests/", "Python requests"))
        .or_else(|| named("curl/", "curl"))
        .or_else(|| named("Wget/", "Wget"))
        .or_else(|| named("Go-http-client/", "Go net/http"))
        .or_else(|| named("okhttp/", "OkHttp"))
        .or_else(|| named("Apache-HttpClient/", "Apache HttpClient"))
}

/// A source's OS: the most recently seen User-Agent that names one — unless its
/// User-Agents name more than one OS (a NAT), when none is named.
pub fn source_os(agents: &[SeenAgent]) -> Option<(&'static str, &SeenAgent)> {
    let mut named: Vec<(&'static str, &SeenAgent)> = agents
        .iter()
        .filter_map(|a| os_of(&a.user_agent).map(|os| (os, a)))
        .collect();
    named.sort_by_key(|(_, a)| std::cmp::Reverse(a.seen));
    let first = *named.first()?;
    named.iter().all(|(os, _)| *os == first.0).then_some(first)
}

/// A source's runtime: the most recently seen User-Agent that names one.
pub fn source_runtime(agents: &[SeenAgent]) -> Option<(String, &SeenAgent)> {
    agents
        .iter()
        .filter_map(|a| runtime_of(&a.user_agent).map(|r| (r, a)))
        .max_by_key(|(_, a)| a.seen)
}

/// The Windows 7 / Server 2008 R2 fix for an SChannel caller.
pub const WINDOWS7_FIX: &str = "Windows 7 / Server 2008 R2 SChannel (the source's own \
User-Agent names it): install KB3140245 (and the SHA-2 updates), set DefaultSecureProtocols=0xA80 \
under HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\\WinHttp and its \
Wow6432Node twin, create HKLM\\SYSTEM\\CurrentControlSet\\Control\\SecurityProviders\\SCHANNEL\\\
Protocols\\TLS 1.2\\Client with Enabled=1 and DisabledByDefault=0, and for .NET callers set \
SchUseStrongCrypto=1 under HKLM\\SOFTWARE\\Microsoft\\.NETFramework\\v4.0.30319 (and Wow6432Node); \
reboot. Better: move the workload off Windows 7 / 2008 R2.";

/// The Windows 10 / 2016+ fix for an SChannel caller: the OS speaks TLS 1.2, the caller
/// (almost always .NET Framework) does not ask for it.
pub const WINDOWS10_FIX: &str = "Windows 10 / Server 2016 or later SChannel (the source's \
own User-Agent names it): the OS speaks TLS 1.2, so the caller is pinned lower — almost always \
.NET Framework without strong crypto. Set SchUseStrongCrypto=1 and SystemDefaultTlsVersions=1 \
(DWORD) under HKLM\\SOFTWARE\\Microsoft\\.NETFramework\\v4.0.30319 and \
HKLM\\SOFTWARE\\Wow6432Node\\Microsoft\\.NETFramework\\v4.0.30319, restart the process, and remove \
any ServicePointManager.SecurityProtocol = Tls in its code or config.";

/// The fix refined by the source's OS: Windows-version-specific for SChannel; for any
/// other library the library's fix stands, with the host noted.
pub fn refine_fix(tls_library: &str, fix: &str, os: Option<(&str, &SeenAgent)>) -> String {
    let Some((os, agent)) = os else {
        return fix.to_string();
    };
    match (tls_library, os) {
        ("schannel", "Windows 7 / Server 2008 R2") => WINDOWS7_FIX.to_string(),
        ("schannel", "Windows 10 / Server 2016 or later") => WINDOWS10_FIX.to_string(),
        ("schannel", _) => fix.to_string(),
        _ => format!(
            "{fix} (Host OS: {os}, from its User-Agent {:?}; the fix is for the TLS library, not the OS.)",
            agent.user_agent
        ),
    }
}

/// Fills in a report row's `source_os` and `source_runtime` from its source's User-Agents,
/// and refines its fix by the OS.
pub fn describe(row: &mut super::CallerRow, seen: &[SeenAgent]) {
    let os = source_os(seen);
    row.source_os = os.map(|(name, a)| Named {
        name: name.to_string(),
        user_agent: a.user_agent.clone(),
        seen: super::report::rfc3339(a.seen),
    });
    row.source_runtime = source_runtime(seen).map(|(name, a)| Named {
        name,
        user_agent: a.user_agent.clone(),
        seen: super::report::rfc3339(a.seen),
    });
    row.fix = refine_fix(&row.tls_library, &row.fix, os);
}

/// The User-Agent of a plain-HTTP request head at the start of `data`, if it is one.
pub fn http_user_agent(data: &[u8]) -> Option<String> {
    const METHODS: [&[u8]; 7] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
    ];
    if !METHODS.iter().any(|m| data.starts_with(m)) {
        return None;
    }
    let head_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(data.len());
    let head = String::from_utf8_lossy(data.get(..head_end)?);
    head.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("user-agent")
            .then(|| clean(value.trim()))
            .filter(|v| !v.is_empty())
    })
}

/// Per-source User-Agents gathered in memory (by `tlspeek analyze`), with the same bounds
/// as the inventory's.
#[derive(Default, Debug)]
pub struct AgentBook {
    by_source: std::collections::HashMap<String, Vec<SeenAgent>>,
    /// User-Agents not kept because `MAX_SOURCES` sources were already held.
    pub dropped: u64,
}

impl AgentBook {
    pub fn add(&mut self, source_ip: &str, user_agent: &str, at: i64) {
        let ua = clean(user_agent);
        if ua.is_empty() {
            return;
        }
        if !self.by_source.contains_key(source_ip) && self.by_source.len() >= MAX_SOURCES {
            self.dropped += 1;
            return;
        }
        let seen = self.by_source.entry(source_ip.to_string()).or_default();
        match seen.iter_mut().find(|a| a.user_agent == ua) {
            Some(a) => a.seen = a.seen.max(at),
            None => seen.push(SeenAgent {
                user_agent: ua,
                seen: at,
            }),
        }
        seen.sort_by_key(|a| std::cmp::Reverse(a.seen));
        seen.truncate(MAX_PER_SOURCE);
    }

    pub fn of(&self, source_ip: &str) -> &[SeenAgent] {
        self.by_source.get(source_ip).map_or(&[], Vec::as_slice)
    }

    /// Every (source, User-Agent, last seen), for the inventory.
    pub fn all(&self) -> impl Iterator<Item = (&str, &str, i64)> {
        self.by_source.iter().flat_map(|(ip, v)| {
            v.iter()
                .map(move |a| (ip.as_str(), a.user_agent.as_str(), a.seen))
        })
    }
}

/// JA4 → User-Agent pairs learned in upgrade mode (where the plaintext shows the
/// User-Agent), for later connections with the same hello that pass without upgrade.
/// Bounded: at most `LEARNED_MAX` pairs, the least recently learned dropped first.
#[derive(Default)]
pub struct Learned {
    pairs: std::sync::Mutex<std::collections::HashMap<String, SeenAgent>>,
}

pub const LEARNED_MAX: usize = 10_000;

impl Learned {
    pub fn learn(&self, ja4: &str, user_agent: &str, at: i64) {
        let ua = clean(user_agent);
        if ja4.is_empty() || ua.is_empty() {
            return;
        }
        let Ok(mut m) = self.pairs.lock() else { return };
        if m.len() >= LEARNED_MAX && !m.contains_key(ja4) {
            if let Some(oldest) = m.iter().min_by_key(|(_, a)| a.seen).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        m.insert(
            ja4.to_string(),
            SeenAgent {
                user_agent: ua,
                seen: at,
            },
        );
    }

    pub fn get(&self, ja4: &str) -> Option<SeenAgent> {
        self.pairs.lock().ok()?.get(ja4).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ua: &str, seen: i64) -> SeenAgent {
        SeenAgent {
            user_agent: ua.into(),
            seen,
        }
    }

    #[test]
    fn user_agents_name_the_windows_version_and_the_runtime() {
        assert_eq!(
            os_of("Microsoft-CryptoAPI/6.1"),
            Some("Windows 7 / Server 2008 R2")
        );
        assert_eq!(
            os_of("Microsoft-CryptoAPI/6.3"),
            Some("Windows 8.1 / Server 2012 R2")
        );
        assert_eq!(
            os_of("Microsoft-CryptoAPI/10.0"),
            Some("Windows 10 / Server 2016 or later")
        );
        assert_eq!(
            os_of("Windows-Update-Agent/7.6.7601.24436 Client-Protocol/1.40"),
            Some("Windows 7 / Server 2008 R2")
        );
        assert_eq!(
            os_of("Mozilla/5.0 (Windows NT 6.2; Win64; x64)"),
            Some("Windows 8 / Server 2012")
        );
        assert_eq!(os_of("curl/7.29.0"), None);
        assert_eq!(
            runtime_of("Java/1.8.0_151").as_deref(),
            Some("Java 8 (1.8.0_151)")
        );
        assert_eq!(
            runtime_of("Java/11.0.2").as_deref(),
            Some("Java 11 (11.0.2)")
        );
        assert_eq!(
            runtime_of("Python-urllib/2.7").as_deref(),
            Some("Python urllib 2.7")
        );
        assert_eq!(runtime_of("curl/7.29.0").as_deref(), Some("curl 7.29.0"));
        assert_eq!(
            runtime_of(
                "Mozilla/5.0 (Windows NT; Windows NT 6.3; en-US) WindowsPowerShell/5.1.14409.1005"
            )
            .as_deref(),
            Some("Windows PowerShell 5.1.14409.1005")
        );
        assert_eq!(clean("a?secret=1\u{7}"), "a");
        assert_eq!(clean(&"x".repeat(400)).len(), MAX_LEN);
    }

    #[test]
    fn a_request_head_gives_its_user_agent_and_the_book_keeps_eight() {
        let req = b"GET /pki/crl/root.crl HTTP/1.1\r\nHost: crl\r\nuser-agent:  Microsoft-CryptoAPI/6.1\r\n\r\n";
        assert_eq!(
            http_user_agent(req).as_deref(),
            Some("Microsoft-CryptoAPI/6.1")
        );
        assert_eq!(http_user_agent(b"\x16\x03\x01"), None);
        assert_eq!(
            http_user_agent(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nUser-Agent: body"),
            None
        );
        let mut b = AgentBook::default();
        for i in 0..12 {
            b.add("10.0.0.1", &format!("ua{i}"), i);
        }
        b.add("10.0.0.1", "ua11", 50);
        assert_eq!(b.of("10.0.0.1").len(), MAX_PER_SOURCE);
        assert_eq!(b.of("10.0.0.1")[0], a("ua11", 50));
        assert!(b.of("10.0.0.2").is_empty());
    }

    #[test]
    fn learned_pairs_are_bounded_and_kept_clean() {
        let l = Learned::default();
        l.learn("t10d0906h2_x", "WindowsPowerShell/5.1?token=1", 5);
        assert_eq!(
            l.get("t10d0906h2_x").map(|a| a.user_agent).as_deref(),
            Some("WindowsPowerShell/5.1")
        );
        for i in 0..LEARNED_MAX + 10 {
            l.learn(&format!("j{i}"), "x", 10 + i as i64);
        }
        assert!(l.pairs.lock().unwrap().len() <= LEARNED_MAX);
        assert!(l.get("t10d0906h2_x").is_none(), "the oldest went first");
    }

    #[test]
    fn a_source_with_two_windows_versions_names_none() {
        let one = [a("Microsoft-CryptoAPI/6.1", 5), a("curl/7.29.0", 9)];
        assert_eq!(
            source_os(&one).map(|(os, _)| os),
            Some("Windows 7 / Server 2008 R2")
        );
        assert_eq!(
            source_runtime(&one).map(|(r, _)| r).as_deref(),
            Some("curl 7.29.0")
        );
        let nat = [
            a("Microsoft-CryptoAPI/6.1", 5),
            a("Microsoft-CryptoAPI/10.0", 9),
        ];
        assert_eq!(source_os(&nat), None);
    }

    #[test]
    fn the_os_refines_an_schannel_fix_and_only_notes_itself_on_others() {
        let seen = a("Microsoft-CryptoAPI/6.1", 1);
        let w7 = Some(("Windows 7 / Server 2008 R2", &seen));
        assert!(refine_fix("schannel", "generic", w7).contains("KB3140245"));
        let w10 = a("Microsoft-CryptoAPI/10.0", 1);
        assert!(
            refine_fix(
                "schannel",
                "generic",
                Some(("Windows 10 / Server 2016 or later", &w10))
            )
            .contains("SchUseStrongCrypto")
        );
        let o = refine_fix("openssl", "upgrade OpenSSL", w7);
        assert!(
            o.starts_with("upgrade OpenSSL") && o.contains("Windows 7"),
            "{o}"
        );
        assert!(!o.contains("KB3140245") && !o.contains("SchUseStrongCrypto"));
        assert_eq!(refine_fix("schannel", "generic", None), "generic");
    }
}
