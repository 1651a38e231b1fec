//! Text formatting for approval messages: checklists, money, times.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A checklist as sent: a list of items (strings, or objects with a name and a done flag) or
/// an object of item → done.
pub fn checklist(v: &Value) -> String {
    fn mark(done: Option<bool>) -> &'static str {
        match done {
            Some(true) => "- [x] ",
            Some(false) => "- [ ] ",
            None => "- ",
        }
    }
    fn scalar(v: &Value) -> String {
        match v {
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        }
    }
    fn done_of(v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "done" | "ok" | "passed" => Some(true),
                "false" | "no" | "todo" | "failed" | "pending" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
    let lines: Vec<String> = match v {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::Object(o) => {
                    let name = ["item", "name", "title", "text", "check"]
                        .iter()
                        .find_map(|k| o.get(*k))
                        .map(scalar)
                        .unwrap_or_else(|| item.to_string());
                    let done = ["done", "checked", "passed", "ok", "status"]
                        .iter()
                        .find_map(|k| o.get(*k))
                        .and_then(done_of);
                    format!("{}{name}", mark(done))
                }
                other => format!("- {}", scalar(other)),
            })
            .collect(),
        Value::Object(o) => o
            .iter()
            .map(|(k, done)| match done_of(done) {
                Some(d) => format!("{}{k}", mark(Some(d))),
                None => format!("- {k}: {}", scalar(done)),
            })
            .collect(),
        _ => Vec::new(),
    };
    lines.join("\n")
}

pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `$1,234.50`
pub fn usd(x: f64) -> String {
    let cents = (x * 100.0).round() as i128;
    let (whole, frac) = (cents.abs() / 100, cents.abs() % 100);
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{}${grouped}.{frac:02}", if cents < 0 { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn money() {
        assert_eq!(usd(0.0), "$0.00");
        assert_eq!(usd(1234.5), "$1,234.50");
        assert_eq!(usd(1_000_000.0), "$1,000,000.00");
        assert_eq!(usd(999.999), "$1,000.00");
    }

    #[test]
    fn checklists() {
        assert_eq!(
            checklist(&json!(["tests green", "backup taken"])),
            "- tests green\n- backup taken"
        );
        assert_eq!(
            checklist(&json!({"tests": true, "backup": false, "owner": "bob"})),
            "- [ ] backup\n- owner: bob\n- [x] tests"
        );
        assert_eq!(
            checklist(&json!([{"item": "smoke", "done": true}, {"name": "rollback plan"}])),
            "- [x] smoke\n- rollback plan"
        );
        assert_eq!(checklist(&json!(null)), "");
    }
}
