//! Entra ID sign-ins: the portal's CSV downloads (English or Japanese headers), the CSVs
//! of the Graph script in Microsoft's TLS article (`Interactive_lowTls_<tenant>.csv`,
//! `NonInteractive_lowTls_…`, `WorkloadIdentities_lowTls_…`), and the JSON of Graph
//! `auditLogs/signIns`. Only sign-ins with the legacy-TLS error (1002016) or the legacy-TLS
//! flag are kept: those are the ones a legacy connection explains.

use serde::Serialize;

use super::text::{DateOrder, parse_time};

/// The Entra ID error for legacy TLS.
pub const LEGACY_TLS_ERROR: &str = "1002016";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SignIn {
    /// RFC 3339 UTC.
    pub time: String,
    #[serde(skip)]
    pub at: f64,
    pub user_principal_name: Option<String>,
    pub display_name: Option<String>,
    pub app: Option<String>,
    pub app_id: Option<String>,
    pub resource: Option<String>,
    pub error_code: Option<String>,
    pub interactive: Option<bool>,
    pub correlation_id: Option<String>,
    /// The egress address the sign-in came from.
    pub ip_address: Option<String>,
    /// How many callers could explain it (filled in by the join).
    pub candidates: usize,
    /// Under a caller: how far (seconds) its nearest legacy connection to an Entra ID host
    /// was from the sign-in, and its rank among the candidates by that distance (1 =
    /// nearest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_distance_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Why it matched no caller (unmatched sign-ins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

/// Column names of each field, as the portal (English, Japanese) and the Graph script
/// write them; compared without case, spaces, hyphens and underscores. The Japanese names
/// are the portal's and those of Microsoft's Japanese documentation of the sign-in log
/// (learn.microsoft.com/ja-jp: the sign-in log's activity details, and the Azure Monitor
/// SigninLogs table reference).
const COLUMNS: &[(&str, &[&str])] = &[
    (
        "time",
        &[
            "createddatetime",
            "date(utc)",
            "date",
            "日付(utc)",
            "日付",
            "作成日時",
            "日時",
        ],
    ),
    (
        "upn",
        &[
            "userprincipalname",
            "username",
            "ユーザー名",
            "ユーザープリンシパル名",
            "serviceprincipalname",
            "サービスプリンシパル名",
        ],
    ),
    (
        "display",
        &[
            "userdisplayname",
            "user",
            "ユーザー",
            "ユーザー表示名",
            "ユーザーの表示名",
        ],
    ),
    (
        "app",
        &[
            "appdisplayname",
            "application",
            "アプリケーション",
            "アプリ表示名",
            "アプリケーション名",
        ],
    ),
    (
        "app_id",
        &[
            "appid",
            "applicationid",
            "アプリケーションid",
            "アプリid",
            "serviceprincipalid",
        ],
    ),
    ("ip", &["ipaddress", "ipアドレス"]),
    (
        "resource",
        &[
            "resourcedisplayname",
            "resource",
            "リソース",
            "リソース表示名",
            "リソース名",
        ],
    ),
    (
        "code",
        &[
            "errorcode",
            "signinerrorcode",
            "サインインのエラーコード",
            "エラーコード",
            "status.errorcode",
        ],
    ),
    (
        "interactive",
        &["isinteractive", "interactive", "対話型", "対話型かどうか"],
    ),
    ("correlation", &["correlationid", "相関id"]),
    (
        "details",
        &[
            "additionaldetails",
            "authenticationprocessingdetails",
            "追加の詳細",
            "認証処理の詳細",
            "認証処理詳細",
        ],
    ),
];

fn norm(h: &str) -> String {
    h.trim()
        .trim_matches('\u{feff}')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '_' | '\u{3000}'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The fields a CSV column can be named for with `--columns field=Header,…`.
pub const FIELDS: [&str; 11] = [
    "time",
    "upn",
    "display",
    "app",
    "app_id",
    "ip",
    "resource",
    "code",
    "interactive",
    "correlation",
    "details",
];

/// Other names of fields in `--columns`: `user` is the account (`upn`), `error` the code.
const FIELD_ALIASES: [(&str, &str); 3] = [("user", "upn"), ("error", "code"), ("account", "upn")];

/// `--columns time=When,user=Who,error=Code`: the headers of a CSV whose names differ from
/// the portal's and the Graph script's.
pub fn parse_columns(map: &str) -> Result<Vec<(String, String)>, String> {
    map.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (f, h) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: write field=Header"))?;
            let f = f.trim();
            let f = FIELD_ALIASES
                .iter()
                .find(|(alias, _)| *alias == f)
                .map_or(f, |(_, field)| field);
            if !FIELDS.contains(&f) {
                return Err(format!(
                    "{f:?}: the fields are {} (user = upn, error = code)",
                    FIELDS.join(", ")
                ));
            }
            Ok((f.to_string(), h.trim().to_string()))
        })
        .collect()
}

/// What one export gave: its legacy-TLS sign-ins, and where it is damaged ("row 7: …");
/// a damaged row is skipped, the others kept.
#[derive(Debug, Default)]
pub struct Read {
    pub signins: Vec<SignIn>,
    pub damaged: Vec<String>,
}

/// Reads one export's text (CSV or Graph JSON). `columns` names CSV headers that differ
/// from the known ones. An error: the file as a whole cannot be read (no time column,
/// dates whose order is unknown, not JSON).
pub fn parse(text: &str, order: DateOrder, columns: &[(String, String)]) -> Result<Read, String> {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        parse_graph_json(t)
    } else {
        parse_csv(t, order, columns)
    }
}

/// The separator of a CSV: `,`, `;` (Excel in many locales) or tab (Excel's "Unicode
/// text"), whichever the header line has most of.
fn delimiter(text: &str) -> u8 {
    let header = text.lines().next().unwrap_or("");
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| header.bytes().filter(|b| b == d).count())
        .unwrap_or(b',')
}

fn parse_csv(text: &str, order: DateOrder, columns: &[(String, String)]) -> Result<Read, String> {
    let mut r = csv::ReaderBuilder::new()
        .delimiter(delimiter(text))
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = r
        .headers()
        .map_err(|e| format!("CSV header: {e}"))?
        .iter()
        .map(norm)
        .collect();
    let col = |field: &str| {
        let given = columns
            .iter()
            .filter(|(f, _)| f == field)
            .map(|(_, h)| h.as_str());
        let known = COLUMNS
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(&[][..], |(_, n)| *n)
            .iter()
            .copied();
        given
            .chain(known)
            .find_map(|n| headers.iter().position(|h| *h == norm(n)))
    };
    let Some(time_col) = col("time") else {
        return Err(format!(
            "unrecognised sign-in CSV: no time column (expected one of createdDateTime, \
             \"Date (UTC)\", \"日付 (UTC)\", or --columns time=…); its columns are: {}",
            headers.join(", ")
        ));
    };
    // The Graph script of Microsoft's TLS article writes only legacy-TLS sign-ins: its
    // CSVs are recognised by their columns, and every row counts.
    let graph_script = [
        "correlationid",
        "createddatetime",
        "failurereason",
        "additionaldetails",
    ]
    .iter()
    .all(|c| headers.iter().any(|h| h == c));
    let cols: Vec<(&str, Option<usize>)> = COLUMNS.iter().map(|(f, _)| (*f, col(f))).collect();
    let mut out = Read::default();
    for (i, rec) in r.records().enumerate() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                out.damaged.push(format!("row {}: {e}", i + 2));
                continue;
            }
        };
        let get = |f: &str| {
            cols.iter()
                .find(|(n, _)| *n == f)
                .and_then(|(_, c)| *c)
                .and_then(|c| rec.get(c))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let raw_time = rec.get(time_col).unwrap_or("");
        let Some(at) = parse_time(raw_time, order) else {
            if super::text::ambiguous(raw_time) {
                // Every date of the file is written the same way: a guess would be wrong
                // for all of them, so the file is refused as a whole.
                return Err(format!(
                    "row {}: {raw_time:?}: day and month cannot be told apart; give --date-order mdy or dmy",
                    i + 2
                ));
            }
            out.damaged
                .push(format!("row {}: unreadable time {raw_time:?}", i + 2));
            continue;
        };
        let s = SignIn {
            time: rfc3339(at),
            at,
            user_principal_name: get("upn"),
            display_name: get("display"),
            app: get("app"),
            app_id: get("app_id"),
            resource: get("resource"),
            error_code: get("code"),
            interactive: get("interactive").map(|v| v.eq_ignore_ascii_case("true")),
            correlation_id: get("correlation"),
            ip_address: get("ip"),
            candidates: 0,
            time_distance_seconds: None,
            rank: None,
            reason: None,
        };
        let legacy_detail = get("details").is_some_and(|d| d.contains("Legacy TLS"));
        if graph_script || s.error_code.as_deref() == Some(LEGACY_TLS_ERROR) || legacy_detail {
            out.signins.push(s);
        }
    }
    Ok(out)
}

fn parse_graph_json(text: &str) -> Result<Read, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("JSON: {e}"))?;
    let items = match &v {
        serde_json::Value::Array(a) => a.as_slice(),
        _ => v
            .get("value")
            .and_then(|x| x.as_array())
            .map_or(&[][..], Vec::as_slice),
    };
    let mut out = Read::default();
    for (i, it) in items.iter().enumerate() {
        let s = |k: &str| it.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let Some(at) = s("createdDateTime").and_then(|t| parse_time(&t, DateOrder::Mdy)) else {
            out.damaged.push(format!(
                "sign-in {} of value[]: no readable createdDateTime",
                i + 1
            ));
            continue;
        };
        let code = it.pointer("/status/errorCode").map(|c| match c {
            serde_json::Value::String(x) => x.clone(),
            other => other.to_string(),
        });
        let flagged = it
            .get("authenticationProcessingDetails")
            .and_then(|d| d.as_array())
            .is_some_and(|d| {
                d.iter().any(|kv| {
                    kv.get("key").and_then(|k| k.as_str())
                        == Some("Legacy TLS (TLS 1.0, 1.1, 3DES)")
                        && kv
                            .get("value")
                            .and_then(|x| x.as_str())
                            .is_some_and(|x| x.eq_ignore_ascii_case("true"))
                })
            });
        if code.as_deref() != Some(LEGACY_TLS_ERROR) && !flagged {
            continue;
        }
        out.signins.push(SignIn {
            time: rfc3339(at),
            at,
            user_principal_name: s("userPrincipalName"),
            display_name: s("userDisplayName"),
            app: s("appDisplayName"),
            app_id: s("appId"),
            resource: s("resourceDisplayName"),
            error_code: code,
            interactive: it.get("isInteractive").and_then(|x| x.as_bool()),
            correlation_id: s("correlationId"),
            ip_address: s("ipAddress"),
            candidates: 0,
            time_distance_seconds: None,
            rank: None,
            reason: None,
        });
    }
    Ok(out)
}

fn rfc3339(at: f64) -> String {
    crate::inventory::report::rfc3339(at as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_script_portal_and_graph_json_exports() {
        let script = "\"CorrelationId\",\"createdDateTime\",\"userPrincipalName\",\"userId\",\"UserDisplayName\",\"AppDisplayName\",\"AppId\",\"IPAddress\",\"isInteractive\",\"ResourceDisplayName\",\"ResourceId\",\"UserAgent\",\"ErrorCode\",\"FailureReason\",\"AdditionalDetails\"\r\n\
\"c1\",\"2026-12-01T09:14:09Z\",\"svc@contoso.com\",\"u\",\"svc\",\"Azure Active Directory PowerShell\",\"1b73\",\"203.0.113.7\",\"False\",\"Windows Azure Active Directory\",\"r\",\"\",\"1002016\",\"TLS\",\"\"\r\n\
\"c2\",\"2026-12-01T09:15:00Z\",\"ok@contoso.com\",\"u\",\"ok\",\"Office\",\"x\",\"203.0.113.7\",\"True\",\"r\",\"r\",\"\",\"0\",\"\",\"\"\r\n";
        assert_eq!(
            parse(script, DateOrder::Mdy, &[]).unwrap().signins.len(),
            2,
            "every row of the Graph script counts"
        );
        let portal = "Date (UTC);Username;Application;IP address;Sign-in error code\n2026-12-01T09:14:07Z;a@x;App;203.0.113.7;1002016\n2026-12-01T09:15:07Z;b@x;App;203.0.113.7;50126\n";
        assert_eq!(
            parse(portal, DateOrder::Mdy, &[]).unwrap().signins.len(),
            1,
            "semicolons; only 1002016 counts"
        );
        let s = parse(script, DateOrder::Mdy, &[]).unwrap().signins;
        assert_eq!(
            s[0].app.as_deref(),
            Some("Azure Active Directory PowerShell")
        );
        assert_eq!(
            (s[0].interactive, s[0].ip_address.as_deref()),
            (Some(false), Some("203.0.113.7"))
        );
        let ja = "日付 (UTC),ユーザー名,アプリケーション,IP アドレス,サインインのエラー コード\n2026/12/01 9:14:07,a@contoso.com,Outlook,203.0.113.7,1002016\n";
        let j = parse(ja, DateOrder::Mdy, &[]).unwrap().signins;
        assert_eq!(
            (j[0].user_principal_name.as_deref(), j[0].time.as_str()),
            (Some("a@contoso.com"), "2026-12-01T09:14:07Z")
        );
        let en = "Date (UTC),Username,Application,IP address,Sign-in error code\n12/1/2026 9:14:07 AM,b@contoso.com,Teams,203.0.113.7,1002016\n";
        assert_eq!(
            parse(en, DateOrder::Mdy, &[]).unwrap().signins[0].time,
            "2026-12-01T09:14:07Z"
        );
        let graph = r#"{"value":[{"createdDateTime":"2026-12-01T09:14:07Z","userPrincipalName":"c@contoso.com","appDisplayName":"App","ipAddress":"203.0.113.7","status":{"errorCode":0},"authenticationProcessingDetails":[{"key":"Legacy TLS (TLS 1.0, 1.1, 3DES)","value":"True"}]},{"createdDateTime":"2026-12-01T09:14:07Z","status":{"errorCode":0}}]}"#;
        let g = parse(graph, DateOrder::Mdy, &[]).unwrap().signins;
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].user_principal_name.as_deref(), Some("c@contoso.com"));
        let bad = parse(
            "createdDateTime,ErrorCode\nnot a time,1002016\n2026-12-01T09:14:07Z,1002016\n",
            DateOrder::Mdy,
            &[],
        )
        .unwrap();
        assert_eq!(bad.signins.len(), 1, "the damaged row loses only itself");
        assert_eq!(
            bad.damaged,
            vec!["row 2: unreadable time \"not a time\"".to_string()]
        );
        let own = "When,Who,Code\n2026-12-01 09:14:07,d@contoso.com,1002016\n";
        assert!(
            parse(own, DateOrder::Mdy, &[]).is_err(),
            "no known time column"
        );
        let cols = parse_columns("time=When, user=Who,error=Code").unwrap();
        assert_eq!(
            parse(own, DateOrder::Mdy, &cols).unwrap().signins[0]
                .user_principal_name
                .as_deref(),
            Some("d@contoso.com")
        );
        assert!(parse_columns("when=When").is_err());
        let amb = "Date (UTC),Username,Sign-in error code\n1/12/2026 9:14:07 AM,e@x,1002016\n";
        let e = parse(amb, DateOrder::Unsure, &[]).unwrap_err();
        assert!(e.contains("--date-order"), "{e}");
        assert_eq!(
            parse(amb, DateOrder::Dmy, &[]).unwrap().signins[0].time,
            "2026-12-01T09:14:07Z"
        );
    }
}
