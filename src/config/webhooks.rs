//! The signed senders: `ICAHUB_WEBHOOK_SECRETS` (who signs, with which secrets) and
//! `ICAHUB_WEBHOOK_ROLES` (what each may do).

use crate::domain::identity::Caller;
use crate::domain::identity::Role;
use crate::domain::standard_webhooks::SigningKey;

/// Prefix of a signed sender's caller name.
pub const CALLER_PREFIX: &str = "webhook:";
/// The roles of a sender `ICAHUB_WEBHOOK_ROLES` does not name.
pub const DEFAULT_ROLES: [Role; 1] = [Role::AlertSender];

/// One sender: its name, its active secrets (several while one rotates), its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub name: String,
    pub keys: Vec<SigningKey>,
    pub roles: Vec<Role>,
}

impl Sender {
    pub fn caller(&self) -> Caller {
        Caller {
            name: format!("{CALLER_PREFIX}{}", self.name),
            roles: self.roles.clone(),
        }
    }
}

/// The senders of `ICAHUB_WEBHOOK_SECRETS` with their roles from `ICAHUB_WEBHOOK_ROLES`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebhookSenders {
    pub senders: Vec<Sender>,
}

fn valid_sender_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The role names of a JSON role setting's value: a name or a list of names; anything else is one
/// empty name, which [`parse_roles`] refuses.
pub(super) fn role_names(v: serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Array(a) => a
            .into_iter()
            .map(|x| x.as_str().unwrap_or("").to_string())
            .collect(),
        _ => vec![String::new()],
    }
}

/// Role names → roles, without repeats; an unknown name or none at all is an error naming `var`
/// and `what` (the sender, or the app role).
pub(super) fn parse_roles(var: &str, what: &str, names: &[String]) -> Result<Vec<Role>, String> {
    let mut roles = Vec::new();
    for n in names {
        let r = Role::parse(n).ok_or_else(|| {
            format!(
                "{var}: {what}: {n:?} is not a role ({})",
                Role::ALL.map(Role::as_str).join(", ")
            )
        })?;
        if !roles.contains(&r) {
            roles.push(r);
        }
    }
    if roles.is_empty() {
        return Err(format!("{var}: {what} names no role"));
    }
    Ok(roles)
}

impl WebhookSenders {
    pub fn configured(&self) -> bool {
        !self.senders.is_empty()
    }

    /// Read `ICAHUB_WEBHOOK_SECRETS` (`name=whsec_…` entries, comma-separated; a name given twice
    /// has two active secrets) and `ICAHUB_WEBHOOK_ROLES` (a comma-separated list of roles every
    /// sender gets, or a JSON object of sender name to role(s); default `alert_sender`). Errors
    /// name the variable and the entry, never a secret.
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<WebhookSenders, String> {
        const SECRETS: &str = "ICAHUB_WEBHOOK_SECRETS";
        const ROLES: &str = "ICAHUB_WEBHOOK_ROLES";
        let Some(list) = get(SECRETS) else {
            if get(ROLES).is_some() {
                return Err(format!(
                    "{ROLES} is set but {SECRETS}, the senders it is for, is not"
                ));
            }
            return Ok(WebhookSenders::default());
        };
        let mut senders: Vec<Sender> = Vec::new();
        let entries = list.split(',').map(str::trim).filter(|s| !s.is_empty());
        for (i, entry) in entries.enumerate() {
            let n = i + 1;
            let (name, secret) = entry.split_once('=').ok_or_else(|| {
                format!(
                    "{SECRETS}: entry #{n} must be name=whsec_… (a sender name, '=', its secret)"
                )
            })?;
            let name = name.trim();
            if !valid_sender_name(name) {
                return Err(format!(
                    "{SECRETS}: entry #{n}: the sender name must be 1-64 letters, digits, '.', '_' or '-'"
                ));
            }
            let key = SigningKey::parse(secret)
                .map_err(|e| format!("{SECRETS}: entry #{n} (sender {name}): the secret {e}"))?;
            if let Some(other) = senders
                .iter()
                .find(|s| s.name != name && s.keys.contains(&key))
            {
                return Err(format!(
                    "{SECRETS}: entry #{n}: senders {} and {name} share a secret, so a signature \
                     could not tell them apart",
                    other.name
                ));
            }
            match senders.iter_mut().find(|s| s.name == name) {
                Some(s) if s.keys.contains(&key) => {}
                Some(s) => s.keys.push(key),
                None => senders.push(Sender {
                    name: name.to_string(),
                    keys: vec![key],
                    roles: DEFAULT_ROLES.to_vec(),
                }),
            }
        }
        if senders.is_empty() {
            return Err(format!("{SECRETS} is set but lists no name=whsec_… entry"));
        }
        if let Some(roles) = get(ROLES) {
            if roles.trim_start().starts_with('{') {
                let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&roles)
                    .map_err(|_| {
                        format!("{ROLES} must be a list of roles, or a JSON object of sender name to role(s)")
                    })?;
                for (name, v) in map {
                    let roles = parse_roles(ROLES, &format!("sender {name}"), &role_names(v))?;
                    let s = senders
                        .iter_mut()
                        .find(|s| s.name == name)
                        .ok_or_else(|| format!("{ROLES}: {name:?} is not a sender of {SECRETS}"))?;
                    s.roles = roles;
                }
            } else {
                let names: Vec<String> = roles
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                let roles = parse_roles(ROLES, "every sender", &names)?;
                for s in &mut senders {
                    s.roles = roles.clone();
                }
            }
        }
        Ok(WebhookSenders { senders })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // The spec's test-vector secret, and another.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const OTHER: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn senders(vars: &[(&str, &str)]) -> Result<WebhookSenders, String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WebhookSenders::from_lookup(&|k| m.get(k).cloned())
    }

    #[test]
    fn roles_per_sender_or_for_all() {
        let secrets = format!("ci={SECRET},mon={OTHER}");
        let s = senders(&[
            ("ICAHUB_WEBHOOK_SECRETS", &secrets),
            ("ICAHUB_WEBHOOK_ROLES", "alert_sender, devops"),
        ])
        .unwrap();
        assert!(s
            .senders
            .iter()
            .all(|x| x.roles == [Role::AlertSender, Role::Devops]));
        let s = senders(&[
            ("ICAHUB_WEBHOOK_SECRETS", &secrets),
            ("ICAHUB_WEBHOOK_ROLES", r#"{"ci": ["devops"]}"#),
        ])
        .unwrap();
        assert_eq!(s.senders[0].roles, [Role::Devops]);
        assert_eq!(s.senders[1].roles, [Role::AlertSender]);
    }

    #[test]
    fn bad_configuration_names_the_variable_and_hides_secrets() {
        let secret_part = "C2FVsBQIhrscChlQIMV";
        for (vars, needle) in [
            (vec![("ICAHUB_WEBHOOK_SECRETS", "monitoring")], "#1 must be name=whsec_"),
            (
                vec![("ICAHUB_WEBHOOK_SECRETS", "bad name=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")],
                "sender name",
            ),
            (
                vec![("ICAHUB_WEBHOOK_SECRETS", "m=C2FVsBQIhrscChlQIMV+b5sSYspob7oD")],
                "whsec_",
            ),
            (vec![("ICAHUB_WEBHOOK_SECRETS", "m=whsec_c2hvcnQ=")], "24 to 64"),
            (
                vec![(
                    "ICAHUB_WEBHOOK_SECRETS",
                    "a=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD,b=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                )],
                "share a secret",
            ),
            (vec![("ICAHUB_WEBHOOK_SECRETS", " , ")], "lists no"),
            (vec![("ICAHUB_WEBHOOK_ROLES", "devops")], "ICAHUB_WEBHOOK_SECRETS"),
            (
                vec![
                    ("ICAHUB_WEBHOOK_SECRETS", "m=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                    ("ICAHUB_WEBHOOK_ROLES", "boss"),
                ],
                "not a role",
            ),
            (
                vec![
                    ("ICAHUB_WEBHOOK_SECRETS", "m=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                    ("ICAHUB_WEBHOOK_ROLES", r#"{"n": "devops"}"#),
                ],
                "not a sender",
            ),
            (
                vec![
                    ("ICAHUB_WEBHOOK_SECRETS", "m=whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                    ("ICAHUB_WEBHOOK_ROLES", r#"{"m": []}"#),
                ],
                "no role",
            ),
        ] {
            let e = senders(&vars).unwrap_err();
            assert!(e.starts_with("ICAHUB_WEBHOOK_"), "{e}");
            assert!(e.contains(needle), "{needle}: {e}");
            assert!(!e.contains(secret_part), "{e}");
        }
        let s = senders(&[("ICAHUB_WEBHOOK_SECRETS", &format!("m={SECRET}"))]).unwrap();
        assert!(!format!("{s:?}").contains(secret_part));
    }
}
