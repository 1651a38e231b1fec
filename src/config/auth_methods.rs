//! Which authentication methods each group of routes accepts (`ICAHUB_AUTH_METHODS`). Pure: the
//! table, its defaults and its validation; the checks themselves are in [`crate::http::auth`]
//! (keys, Entra ID tokens) and [`crate::http::verify`] (Standard Webhooks signatures).
//!
//! Routes outside these groups bring their own credentials and are not configured here:
//! `/api/v1/azdo/hooks` (the hook's basic auth or secret header, or an API key), Mattermost's
//! `/api/v1/mattermost/actions` (the signed token in each button) and the health probes.

use crate::domain::identity::Role;
use std::collections::BTreeMap;
use std::fmt;

/// A way to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// An icahub API key: `Authorization: Bearer icak_…`, or the password of Basic auth.
    ApiKey,
    /// A Microsoft Entra ID access token: `Authorization: Bearer <JWT>`.
    Entra,
    /// A Standard Webhooks signature: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    WebhookSignature,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::ApiKey, Method::Entra, Method::WebhookSignature];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::ApiKey => "api_key",
            Method::Entra => "entra",
            Method::WebhookSignature => "webhook_signature",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s.trim())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group of routes that share their accepted methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteGroup {
    /// `POST /api/v1/azdev/alert`, `POST /api/v1/alertmanager`.
    Alerts,
    /// `POST /api/v1/azdev/run/start|event|finish`.
    Ledger,
    /// `POST /api/v1/azdev/approval`, `…/approval/{id}/sign`, `…/approval/{id}/override`,
    /// `POST /api/v1/azdo/check`.
    Approvals,
    /// Every `GET` under `/api/v1` (incidents, runs, approvals).
    Read,
}

impl RouteGroup {
    /// The roles a caller needs to use this group's routes at all (any one of them), or `None`
    /// when each route checks its own: alerts need `alert_sender` (or `admin`), so a reader's
    /// or a pipeline's key cannot page on-call; reads need any role but `alert_sender`
    /// ([`Role::READERS`]), so the key in an action group's webhook URL reads nothing.
    pub fn roles(self) -> Option<&'static [Role]> {
        match self {
            RouteGroup::Alerts => Some(&Role::ALERT_SENDERS),
            RouteGroup::Read => Some(&Role::READERS),
            RouteGroup::Ledger | RouteGroup::Approvals => None,
        }
    }

    pub const ALL: [RouteGroup; 4] = [
        RouteGroup::Alerts,
        RouteGroup::Ledger,
        RouteGroup::Approvals,
        RouteGroup::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteGroup::Alerts => "alerts",
            RouteGroup::Ledger => "ledger",
            RouteGroup::Approvals => "approvals",
            RouteGroup::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<RouteGroup> {
        RouteGroup::ALL.into_iter().find(|g| g.as_str() == s.trim())
    }

    /// Whether its requests carry a body that a signature can cover.
    pub fn has_body(self) -> bool {
        !matches!(self, RouteGroup::Read)
    }
}

impl fmt::Display for RouteGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accepted methods of every route group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthMethods(BTreeMap<RouteGroup, Vec<Method>>);

impl AuthMethods {
    /// What every group accepts without `ICAHUB_AUTH_METHODS`: API keys and Entra ID tokens
    /// everywhere (a token is refused with a hint while Entra is not configured), and
    /// Standard Webhooks signatures on the routes with a body once signing secrets are configured.
    pub fn defaults(webhook_secrets: bool) -> AuthMethods {
        AuthMethods(
            RouteGroup::ALL
                .into_iter()
                .map(|g| {
                    let mut m = vec![Method::ApiKey, Method::Entra];
                    if webhook_secrets && g.has_body() {
                        m.push(Method::WebhookSignature);
                    }
                    (g, m)
                })
                .collect(),
        )
    }

    /// The defaults, with the groups named in `json` (the value of `ICAHUB_AUTH_METHODS`)
    /// replaced. `entra` and `webhook_signature` may be listed only when configured. Errors name
    /// the variable.
    pub fn parse(
        json: Option<&str>,
        entra_configured: bool,
        webhook_secrets: bool,
    ) -> Result<AuthMethods, String> {
        const VAR: &str = "ICAHUB_AUTH_METHODS";
        let mut table = AuthMethods::defaults(webhook_secrets);
        let Some(json) = json else {
            return Ok(table);
        };
        let groups = || RouteGroup::ALL.map(RouteGroup::as_str).join(", ");
        let methods = || Method::ALL.map(Method::as_str).join(", ");
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(json).map_err(|_| {
                format!(
                    "{VAR} must be a JSON object of route group ({}) to a list of methods ({}), \
                     e.g. {{\"alerts\": [\"webhook_signature\"]}}",
                    groups(),
                    methods()
                )
            })?;
        for (name, list) in v {
            let group = RouteGroup::parse(&name)
                .ok_or_else(|| format!("{VAR}: {name:?} is not a route group ({})", groups()))?;
            let items = list.as_array().ok_or_else(|| {
                format!("{VAR}: {name} must be a list of methods ({})", methods())
            })?;
            let mut accepted = Vec::new();
            for item in items {
                let m = item.as_str().and_then(Method::parse).ok_or_else(|| {
                    format!("{VAR}: {name}: {item} is not a method ({})", methods())
                })?;
                match m {
                    Method::Entra if !entra_configured => {
                        return Err(format!(
                            "{VAR}: {name} lists entra, but Entra ID is not configured \
                             (ICAHUB_ENTRA_TENANT_ID, ICAHUB_ENTRA_AUDIENCES)"
                        ))
                    }
                    Method::WebhookSignature if !webhook_secrets => {
                        return Err(format!(
                            "{VAR}: {name} lists webhook_signature, but ICAHUB_WEBHOOK_SECRETS \
                             is not set"
                        ))
                    }
                    Method::WebhookSignature if !group.has_body() => {
                        return Err(format!(
                            "{VAR}: {name} cannot accept webhook_signature: its requests have no \
                             body to sign"
                        ))
                    }
                    _ => {}
                }
                if !accepted.contains(&m) {
                    accepted.push(m);
                }
            }
            if accepted.is_empty() {
                return Err(format!(
                    "{VAR}: {name} lists no method, which would refuse every request (for local \
                     development without authentication, ICAHUB_AUTH=off)"
                ));
            }
            table.0.insert(group, accepted);
        }
        Ok(table)
    }

    /// The methods `group` accepts, in the order they were configured.
    pub fn accepted(&self, group: RouteGroup) -> &[Method] {
        self.0.get(&group).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn accepts(&self, group: RouteGroup, m: Method) -> bool {
        self.accepted(group).contains(&m)
    }

    /// `api_key, entra` (for messages).
    pub fn describe(&self, group: RouteGroup) -> String {
        self.accepted(group)
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Default for AuthMethods {
    fn default() -> Self {
        AuthMethods::defaults(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_add_signatures_where_secrets_are_configured() {
        let d = AuthMethods::defaults(false);
        for g in RouteGroup::ALL {
            assert_eq!(d.accepted(g), [Method::ApiKey, Method::Entra]);
        }
        let d = AuthMethods::defaults(true);
        assert!(d.accepts(RouteGroup::Alerts, Method::WebhookSignature));
        assert!(d.accepts(RouteGroup::Ledger, Method::WebhookSignature));
        assert!(!d.accepts(RouteGroup::Read, Method::WebhookSignature));
        assert_eq!(AuthMethods::parse(None, false, true).unwrap(), d);
    }

    #[test]
    fn configured_groups_replace_their_defaults() {
        let t = AuthMethods::parse(
            Some(r#"{"alerts": ["webhook_signature"], "read": ["entra", "api_key", "entra"]}"#),
            true,
            true,
        )
        .unwrap();
        assert_eq!(t.accepted(RouteGroup::Alerts), [Method::WebhookSignature]);
        assert_eq!(t.describe(RouteGroup::Read), "entra, api_key");
        // Groups it does not name keep their defaults.
        assert_eq!(
            t.accepted(RouteGroup::Ledger),
            [Method::ApiKey, Method::Entra, Method::WebhookSignature]
        );
    }

    #[test]
    fn invalid_tables_name_the_variable() {
        for (json, entra, secrets, needle) in [
            ("[]", true, true, "JSON object"),
            ("{\"alerts\": \"api_key\"}", true, true, "list"),
            ("{\"writes\": [\"api_key\"]}", true, true, "route group"),
            ("{\"alerts\": [\"password\"]}", true, true, "not a method"),
            ("{\"alerts\": [1]}", true, true, "not a method"),
            ("{\"alerts\": []}", true, true, "no method"),
            (
                "{\"alerts\": [\"entra\"]}",
                false,
                true,
                "ICAHUB_ENTRA_TENANT_ID",
            ),
            (
                "{\"alerts\": [\"webhook_signature\"]}",
                true,
                false,
                "ICAHUB_WEBHOOK_SECRETS",
            ),
            ("{\"read\": [\"webhook_signature\"]}", true, true, "no body"),
        ] {
            let e = AuthMethods::parse(Some(json), entra, secrets).unwrap_err();
            assert!(e.starts_with("ICAHUB_AUTH_METHODS"), "{json}: {e}");
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
