//! The Azure Pipelines "Invoke Azure Function" check in callback mode (docs/protocols.md §4): the
//! callback details the check sends as headers, validated into a [`CheckCallback`], and the hosts
//! a callback may go to ([`PlanHosts`]). Pure: the endpoint is [`crate::http::azdo_check`], the
//! callback itself [`crate::sinks::azure_devops`].
//!
//! The headers come from the check's configuration (`PlanUrl: $(system.CollectionUri)`, ...), so a
//! pipeline author's typo or an unexpanded `$(variable)` shows up here: each is named in the error.
//! The `AuthToken` (a job access token, valid 48 hours) is never echoed in an error or a log.

use super::alert::PayloadError;
use serde::{Deserialize, Serialize};

/// The headers the check must send, in the order the task's defaults list them.
pub const REQUIRED_HEADERS: [&str; 8] = [
    "PlanUrl",
    "ProjectId",
    "HubName",
    "PlanId",
    "JobId",
    "TimelineId",
    "TaskInstanceId",
    "AuthToken",
];

/// Where to tell Azure DevOps the outcome, as stored in an approval's `check`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCallback {
    /// `System.CollectionUri`, normalized: one `/` between segments and a trailing `/`.
    pub plan_url: String,
    pub project_id: String,
    pub hub_name: String,
    pub plan_id: String,
    pub job_id: String,
    pub timeline_id: String,
    pub task_instance_id: String,
    /// `System.AccessToken` of the check's job. Secret: never stored with the approval (see
    /// [`CheckCallback::stored`]); empty when read back from a stored check.
    #[serde(default)]
    pub auth_token: String,
    /// `Build.BuildId`, when the check sends it (it is the run id the hook script uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
}

impl std::fmt::Debug for CheckCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckCallback")
            .field("plan_url", &self.plan_url)
            .field("project_id", &self.project_id)
            .field("hub_name", &self.hub_name)
            .field("plan_id", &self.plan_id)
            .field("job_id", &self.job_id)
            .field("timeline_id", &self.timeline_id)
            .field("task_instance_id", &self.task_instance_id)
            .field("auth_token", &"***")
            .field("build_id", &self.build_id)
            .finish()
    }
}

/// The field of a stored check (and of its `check.completed` row) naming the secret that holds
/// the job's token.
pub const SECRET_FIELD: &str = "auth_token_secret";
/// The field of a stored check holding the SHA-256 (hex) of the job's token.
pub const TOKEN_SHA_FIELD: &str = "auth_token_sha256";

/// The secret store key of the token of check instance `task_instance_id` answering approval
/// `approval_id`: one per check instance, so a re-run's check never overwrites the token of a
/// callback still waiting to go out.
pub fn secret_key(approval_id: &str, task_instance_id: &str) -> String {
    format!("azdo-check|{approval_id}|{task_instance_id}")
}

/// The SHA-256 (hex) of a token: what the audit trail keeps instead of it.
pub fn token_sha256(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Take the token out of a stored check value (as earlier versions wrote it, `auth_token`
/// inline): `Some(token)` when there was one, the value left with `auth_token_sha256` instead.
pub fn strip_token(check: &mut serde_json::Value) -> Option<String> {
    let o = check.as_object_mut()?;
    let token = match o.remove("auth_token") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => t,
        _ => return None,
    };
    o.insert(TOKEN_SHA_FIELD.into(), token_sha256(&token).into());
    Some(token)
}

impl CheckCallback {
    /// The check as an approval keeps it (and as its audit entries and outbox row carry it):
    /// every field but the token, plus the token's SHA-256 and the key of the secret that holds
    /// it ([`secret_key`]).
    pub fn stored(&self, secret_key: &str) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("auth_token");
            o.insert(
                TOKEN_SHA_FIELD.into(),
                token_sha256(&self.auth_token).into(),
            );
            o.insert(SECRET_FIELD.into(), secret_key.into());
        }
        v
    }

    /// Read and validate the check's headers (`get` looks a header up by name, any case). Every
    /// missing header is named in one error; then the first invalid one.
    pub fn from_headers(
        get: impl Fn(&str) -> Option<String>,
        hosts: &PlanHosts,
    ) -> Result<CheckCallback, PayloadError> {
        let values: Vec<Option<String>> = REQUIRED_HEADERS
            .iter()
            .map(|h| {
                get(h)
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
            })
            .collect();
        let missing: Vec<&str> = REQUIRED_HEADERS
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(h, _)| *h)
            .collect();
        if !missing.is_empty() {
            return Err(PayloadError::new(
                missing
                    .iter()
                    .map(|h| format!("header:{h}"))
                    .collect::<Vec<_>>()
                    .join(","),
                format!(
                    "missing required header(s): {} (the Invoke Azure Function check sends them by default; keep them in its Headers)",
                    missing.join(", ")
                ),
            ));
        }
        let v = |i: usize| values[i].clone().unwrap_or_default();
        let (plan_url, host) = normalize_plan_url(&v(0))
            .map_err(|e| PayloadError::new("header:PlanUrl", format!("PlanUrl {e}")))?;
        if !plan_url.starts_with("https://") && !hosts.allows_plain_http(&host) {
            return Err(PayloadError::new(
                "header:PlanUrl",
                format!(
                    "PlanUrl must be https (the hub sends the job's token there); plain http only to a host ICAHUB_AZDO_PLAN_HOSTS names exactly, and {host:?} is not one"
                ),
            ));
        }
        if !hosts.allows(&host) {
            return Err(PayloadError::new(
                "header:PlanUrl",
                format!(
                    "PlanUrl host {host:?} is not an Azure DevOps host this hub calls back (ICAHUB_AZDO_PLAN_HOSTS)"
                ),
            ));
        }
        let auth_token = v(7);
        if auth_token.contains("$(") {
            return Err(PayloadError::new(
                "header:AuthToken",
                "AuthToken is an unexpanded variable: set it to $(system.AccessToken) in the check's Headers",
            ));
        }
        if auth_token.len() > 16_384 || !auth_token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PayloadError::new(
                "header:AuthToken",
                "AuthToken is not a token (printable characters without spaces, at most 16384)",
            ));
        }
        let build_id = match get("BuildId").map(|b| b.trim().to_string()) {
            None => None,
            Some(b) if b.is_empty() => None,
            Some(b) => Some(segment("BuildId", &b)?),
        };
        Ok(CheckCallback {
            plan_url,
            project_id: segment("ProjectId", &v(1))?,
            hub_name: segment("HubName", &v(2))?,
            plan_id: segment("PlanId", &v(3))?,
            job_id: segment("JobId", &v(4))?,
            timeline_id: segment("TimelineId", &v(5))?,
            task_instance_id: segment("TaskInstanceId", &v(6))?,
            auth_token,
            build_id,
        })
    }

    /// The Azure DevOps organization (collection) the check came from: `fabrikam` for
    /// `https://dev.azure.com/fabrikam/` and `https://fabrikam.visualstudio.com/`; for another
    /// host (Azure DevOps Server) `<host>/<collection>`. Lower-case.
    pub fn organization(&self) -> String {
        organization_of(&self.plan_url)
    }

    /// The same organization and project: the only checks that may answer an approval another
    /// check created.
    pub fn same_project(&self, other: &CheckCallback) -> bool {
        self.organization() == other.organization()
            && self.project_id.eq_ignore_ascii_case(&other.project_id)
    }

    /// The same check instance (a repeat of one request), as opposed to another evaluation.
    pub fn same_instance(&self, other: &CheckCallback) -> bool {
        self.plan_url == other.plan_url
            && self.plan_id == other.plan_id
            && self.job_id == other.job_id
            && self.task_instance_id == other.task_instance_id
    }
}

/// An id that becomes a URL path segment: GUIDs, hub names (`build`, `checks`, `Release`), numbers.
fn segment(name: &str, value: &str) -> Result<String, PayloadError> {
    let field = format!("header:{name}");
    if value.contains("$(") {
        return Err(PayloadError::new(
            field,
            format!("{name} is the unexpanded variable {value:?}: check the variable's name in the check's Headers"),
        ));
    }
    if value.len() > 128
        || !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        let shown: String = value.chars().take(64).collect();
        return Err(PayloadError::new(
            field,
            format!("{name} {shown:?} is not an id (letters, digits, - and _, at most 128)"),
        ));
    }
    Ok(value.to_string())
}

/// `https://dev.azure.com//fabrikam` → (`https://dev.azure.com/fabrikam/`, `dev.azure.com`):
/// empty segments dropped (docs/protocols.md §4: `PlanUrl` ends with `/`, and naive joining makes
/// `//`), a trailing `/` added, the host lower-cased. No query, fragment, credentials, `.` or `..`.
pub fn normalize_plan_url(raw: &str) -> Result<(String, String), String> {
    let raw = raw.trim();
    if raw.contains("$(") {
        return Err(format!(
            "is the unexpanded variable {raw:?}: use $(system.CollectionUri)"
        ));
    }
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| {
        "must be an http(s) URL such as https://dev.azure.com/fabrikam/".to_string()
    })?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err("must be an http(s) URL such as https://dev.azure.com/fabrikam/".into());
    }
    if raw.len() > 2048
        || raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
    {
        return Err("must be a plain URL: no spaces, query or fragment".into());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("must name a host (and no credentials)".into());
    }
    let authority = authority.to_ascii_lowercase();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']').ok_or("has a malformed IPv6 host")?;
        let port = &v6[end + 1..];
        if !(port.is_empty() || port.strip_prefix(':').is_some_and(is_port)) {
            return Err("has a malformed port".into());
        }
        if v6[..end].parse::<std::net::Ipv6Addr>().is_err() {
            return Err("has a malformed IPv6 host".into());
        }
        format!("[{}]", &v6[..end])
    } else {
        let host = match authority.split_once(':') {
            Some((h, port)) if is_port(port) => h.to_string(),
            Some(_) => return Err("has a malformed port".into()),
            None => authority.clone(),
        };
        // Brackets and colons belong to the IPv6 form only.
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("has a malformed host".into());
        }
        host
    };
    if host.is_empty() {
        return Err("has a malformed host".into());
    }
    // URL parsers treat `%2e` as `.`, so `%2e%2e` is a `..` too.
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments
        .iter()
        .map(|s| s.to_ascii_lowercase().replace("%2e", "."))
        .any(|s| s == "." || s == "..")
    {
        return Err("must not contain . or .. segments".into());
    }
    let mut url = format!("{scheme}://{authority}/");
    for s in segments {
        url.push_str(s);
        url.push('/');
    }
    Ok((url, host))
}

fn is_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok()
}

/// See [`CheckCallback::organization`]; `plan_url` is normalized.
pub fn organization_of(plan_url: &str) -> String {
    let rest = plan_url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(plan_url);
    let mut parts = rest.split('/').filter(|s| !s.is_empty());
    let authority = parts.next().unwrap_or_default().to_ascii_lowercase();
    let host = authority.split(':').next().unwrap_or_default().to_string();
    let first = parts.next().unwrap_or_default().to_ascii_lowercase();
    if host == "dev.azure.com" {
        first
    } else if let Some(org) = host.strip_suffix(".visualstudio.com") {
        org.to_string()
    } else if first.is_empty() {
        authority
    } else {
        format!("{authority}/{first}")
    }
}

/// The Azure DevOps organizations whose checks this hub answers (`ICAHUB_AZDO_ORGANIZATIONS`):
/// a host list alone lets any organization on dev.azure.com create approvals and take over a
/// check. Names as [`CheckCallback::organization`] gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Organizations(Vec<String>);

impl Organizations {
    pub fn parse(list: &str) -> Result<Organizations, String> {
        let orgs: Vec<String> = list
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect();
        for o in &orgs {
            if !o
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/[]".contains(&b))
            {
                return Err(format!(
                    "{o:?} is not an organization name (fabrikam, or host/collection for Azure DevOps Server)"
                ));
            }
        }
        Ok(Organizations(orgs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, org: &str) -> bool {
        self.0.iter().any(|o| o.eq_ignore_ascii_case(org))
    }

    pub fn list(&self) -> String {
        self.0.join(",")
    }
}

/// The hosts a check's `PlanUrl` may name (`ICAHUB_AZDO_PLAN_HOSTS`): the hub sends the job's
/// token there, so a caller must not be able to point it anywhere else. Exact names, `*.suffix`
/// for subdomains, or `*` for any host (Azure DevOps Server on a private name: list it instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanHosts(Vec<String>);

impl PlanHosts {
    /// Azure DevOps Services: `dev.azure.com/{org}/` and the older `{org}.visualstudio.com/`.
    pub const DEFAULT: &'static str = "dev.azure.com,*.dev.azure.com,*.visualstudio.com";

    pub fn parse(list: &str) -> Result<PlanHosts, String> {
        let hosts: Vec<String> = list
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if hosts.is_empty() {
            return Err("names no hosts".into());
        }
        for h in &hosts {
            let name = h.strip_prefix("*.").unwrap_or(h);
            let ok = h == "*"
                || (!name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b)));
            if !ok {
                return Err(format!("{h:?} is not a host name, *.suffix or *"));
            }
        }
        Ok(PlanHosts(hosts))
    }

    /// Plain http only to a loopback host named exactly (a local test server), never through
    /// `*` or a `*.suffix`: the job's token must not cross the network in the clear.
    pub fn allows_plain_http(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let loopback = host == "localhost"
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback && self.0.contains(&host)
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|p| {
            p == "*"
                || *p == host
                || p.strip_prefix('*')
                    .is_some_and(|suffix| suffix.starts_with('.') && host.ends_with(suffix))
        })
    }
}

impl Default for PlanHosts {
    fn default() -> Self {
        PlanHosts::parse(Self::DEFAULT).expect("the default list parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect()
    }

    fn sample() -> HashMap<String, String> {
        headers(&[
            ("PlanUrl", "https://dev.azure.com/fabrikamfiber/"),
            ("ProjectId", "7c2a3b5e-1f4d-4c8a-9b6e-2d1f0a3c4b5d"),
            ("HubName", "checks"),
            ("PlanId", "0a6b1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d"),
            ("JobId", "3a7e60dc-c5b0-5009-86eb-0f217c12e2ea"),
            ("TimelineId", "0a6b1c2d-3e4f-5a6b-7c8d-9e0f1a2b3c4d"),
            ("TaskInstanceId", "61153303-347e-5f06-a6a1-ce2102bd68eb"),
            ("AuthToken", "eyJ0eXAi.eyJzdWIi.c2lnbmF0dXJl"),
            ("BuildId", "4711"),
        ])
    }

    #[test]
    fn organizations_and_plain_http() {
        assert_eq!(
            organization_of("https://dev.azure.com/Fabrikam/"),
            "fabrikam"
        );
        assert_eq!(
            organization_of("https://contoso.visualstudio.com/"),
            "contoso"
        );
        assert_eq!(
            organization_of("https://tfs.corp.example/DefaultCollection/"),
            "tfs.corp.example/defaultcollection"
        );
        assert_eq!(
            organization_of("http://127.0.0.1:8080/org/"),
            "127.0.0.1:8080/org"
        );
        let o = Organizations::parse("contoso, Fabrikam").unwrap();
        assert!(o.allows("fabrikam") && !o.allows("evil"));
        assert!(Organizations::parse("a b").is_err());
        let mut h = sample();
        h.insert(
            "planurl".into(),
            "http://dev.azure.com/fabrikamfiber/".into(),
        );
        assert!(parse(&h).unwrap_err().problem.contains("https"));
        let local = PlanHosts::parse("127.0.0.1,*.dev.azure.com").unwrap();
        assert!(local.allows_plain_http("127.0.0.1"));
        assert!(!local.allows_plain_http("x.dev.azure.com"));
        assert!(!PlanHosts::parse("*")
            .unwrap()
            .allows_plain_http("evil.example"));
        assert!(!PlanHosts::parse("intranet.example")
            .unwrap()
            .allows_plain_http("intranet.example"));
    }

    fn parse(h: &HashMap<String, String>) -> Result<CheckCallback, PayloadError> {
        CheckCallback::from_headers(
            |n| h.get(&n.to_ascii_lowercase()).cloned(),
            &PlanHosts::default(),
        )
    }

    #[test]
    fn the_default_headers_parse() {
        let c = parse(&sample()).unwrap();
        assert_eq!(c.plan_url, "https://dev.azure.com/fabrikamfiber/");
        assert_eq!(c.hub_name, "checks");
        assert_eq!(c.build_id.as_deref(), Some("4711"));
        assert!(!format!("{c:?}").contains("c2lnbmF0dXJl"));
        assert!(c.same_instance(&c.clone()));
    }

    #[test]
    fn every_missing_header_is_named() {
        let mut h = sample();
        h.remove("planurl");
        h.remove("authtoken");
        h.insert("jobid".into(), "  ".into());
        let e = parse(&h).unwrap_err();
        assert_eq!(e.field, "header:PlanUrl,header:JobId,header:AuthToken");
        assert!(
            e.problem.contains("PlanUrl, JobId, AuthToken"),
            "{}",
            e.problem
        );
    }

    #[test]
    fn bad_values_are_named_and_the_token_is_never_echoed() {
        for (name, value, field) in [
            ("PlanId", "$(system.PlanId)", "header:PlanId"),
            ("HubName", "checks/../../x", "header:HubName"),
            ("PlanUrl", "$(system.CollectionUri)", "header:PlanUrl"),
            ("PlanUrl", "ftp://dev.azure.com/x/", "header:PlanUrl"),
            ("PlanUrl", "https://evil.example.com/x/", "header:PlanUrl"),
            (
                "PlanUrl",
                "https://user:pw@dev.azure.com/x/",
                "header:PlanUrl",
            ),
            ("PlanUrl", "https://dev.azure.com/x/?a=b", "header:PlanUrl"),
            ("AuthToken", "$(system.AccessToken)", "header:AuthToken"),
            ("AuthToken", "secret with spaces", "header:AuthToken"),
        ] {
            let mut h = sample();
            h.insert(name.to_ascii_lowercase(), value.into());
            let e = parse(&h).unwrap_err();
            assert_eq!(e.field, field, "{name}={value}: {}", e.problem);
            if name == "AuthToken" {
                assert!(!e.problem.contains("secret with"), "{}", e.problem);
            }
        }
    }

    #[test]
    fn plan_urls_are_normalized() {
        for (raw, want) in [
            (
                "https://dev.azure.com/fabrikam/",
                "https://dev.azure.com/fabrikam/",
            ),
            (
                "https://dev.azure.com/fabrikam",
                "https://dev.azure.com/fabrikam/",
            ),
            (
                "https://dev.azure.com//fabrikam//",
                "https://dev.azure.com/fabrikam/",
            ),
            (
                "HTTPS://Fabrikam.VisualStudio.com/",
                "https://fabrikam.visualstudio.com/",
            ),
            (
                "http://127.0.0.1:8080/tfs/DefaultCollection/",
                "http://127.0.0.1:8080/tfs/DefaultCollection/",
            ),
        ] {
            assert_eq!(normalize_plan_url(raw).unwrap().0, want, "{raw}");
        }
        assert_eq!(
            normalize_plan_url("http://[::1]:80/x").unwrap(),
            ("http://[::1]:80/x/".to_string(), "[::1]".to_string())
        );
        for bad in [
            "dev.azure.com/x",
            "https:///x",
            "https://h:port/",
            "https://h/../x",
            // Found by fuzzing (tests/fixtures/fuzz/azdo_check): no URL parser takes these.
            "https://dev.azure.com:99999/fabrikam/",
            "https://x[.dev.azure.com/fabrikam/",
            "https://[fabrikam.dev.azure.com]/x/",
            "https://dev.azure.com/fabrikam/%2E%2e/",
        ] {
            assert!(normalize_plan_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_hosts() {
        let d = PlanHosts::default();
        assert!(d.allows("dev.azure.com"));
        assert!(d.allows("vsrm.dev.azure.com"));
        assert!(d.allows("fabrikam.visualstudio.com"));
        assert!(!d.allows("visualstudio.com.evil.net"));
        assert!(!d.allows("evildev.azure.com"));
        assert!(!d.allows("127.0.0.1"));
        assert!(PlanHosts::parse("*").unwrap().allows("anything"));
        assert!(PlanHosts::parse("tfs.contoso.local, 127.0.0.1")
            .unwrap()
            .allows("127.0.0.1"));
        assert!(PlanHosts::parse(" , ").is_err());
        assert!(PlanHosts::parse("a/b").is_err());
    }
}
