//! Lenient JSON helpers for the typing quirks of real senders (see docs/protocols.md §2.1 and §7):
//! values that are a string in one sample and a number in the next, lists sent as a real array or
//! as JSON inside a string, timestamps with any number of fractional digits, with or without an
//! offset, or in the old `3/22/2019 1:36:31 PM` form. Also the strict accessors the parsers use for
//! the few fields they require, which name the JSON path of whatever is wrong. And
//! [`parse_strict`], the one parser of untrusted JSON: a key twice in one object is refused.

use super::alert::PayloadError;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why [`parse_strict`] refused a text.
#[derive(Debug, thiserror::Error)]
pub enum StrictError {
    /// A key appears twice in one object (at any depth). serde_json keeps the last value, other
    /// parsers the first: one body would mean two things, so it means nothing. `path` is the JSON
    /// path of the repeated key (`data.essentials.alertId`, `alerts[0].labels.severity`).
    #[error("duplicate key {key:?} at {path}: a key may appear only once in an object")]
    Duplicate { path: String, key: String },
    /// Not JSON (or not of the expected shape, for typed envelopes).
    #[error("{0}")]
    Syntax(#[from] serde_json::Error),
}

/// The most characters of one key shown in a path or message (the key is the caller's).
const KEY_CHARS: usize = 64;

/// Parse untrusted JSON into a [`Value`] like `serde_json::from_str`, refusing duplicate keys at
/// any depth. It builds the value in the same single pass (no second walk, no per-key path
/// bookkeeping): only when a duplicate is found is its path collected, while the error unwinds.
pub fn parse_strict(text: &str) -> Result<Value, StrictError> {
    let mut trail = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Strict { trail: &mut trail }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if !trail.is_empty() => {
            let key = trail.first().map(|s| s.key.clone()).unwrap_or_default();
            Err(StrictError::Duplicate {
                path: path_of(&trail),
                key,
            })
        }
        Err(e) => Err(StrictError::Syntax(e)),
    }
}

/// One step of the path to a duplicate, innermost first.
struct Step {
    key: String,
    index: Option<usize>,
}

fn path_of(trail: &[Step]) -> String {
    let mut path = String::new();
    for step in trail.iter().rev() {
        match step.index {
            Some(i) => path.push_str(&format!("[{i}]")),
            None => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&step.key);
            }
        }
    }
    path
}

fn key_step(k: &str) -> Step {
    Step {
        key: super::bounded::truncate(k, KEY_CHARS).into_owned(),
        index: None,
    }
}

/// A [`Value`] that refuses duplicate keys; `trail` is empty unless one was found.
struct Strict<'a> {
    trail: &'a mut Vec<Step>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict { trail: self.trail }.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        loop {
            match seq.next_element_seed(Strict {
                trail: &mut *self.trail,
            }) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => return Ok(Value::Array(out)),
                Err(e) => {
                    if !self.trail.is_empty() {
                        self.trail.push(Step {
                            key: String::new(),
                            index: Some(out.len()),
                        });
                    }
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                self.trail.push(key_step(&key));
                return Err(de::Error::custom("duplicate key"));
            }
            match map.next_value_seed(Strict {
                trail: &mut *self.trail,
            }) {
                Ok(v) => {
                    out.insert(key, v);
                }
                Err(e) => {
                    if !self.trail.is_empty() {
                        self.trail.push(key_step(&key));
                    }
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// The JSON type of `v` as a phrase for error messages: "a string", "a number", "null", ...
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A scalar as text: strings as they are, numbers and booleans formatted; `None` for null,
/// arrays and objects.
pub fn lenient_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// [`lenient_string`] of `obj[key]`, with empty or whitespace-only text treated as absent.
pub fn lenient_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(lenient_string)
        .filter(|s| !s.trim().is_empty())
}

/// A list sent either as a real JSON array or as a string holding a JSON array (ServiceHealth
/// `impactedServices`). `None` for anything else, including a string that is not a JSON array.
pub fn array_or_json_string(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) => Some(items.clone()),
        Value::String(s) => match parse_strict(s.trim()) {
            Ok(Value::Array(items)) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

/// Parse a timestamp leniently, always into UTC, between 1970 and 9999:
/// RFC 3339 with any number of fractional digits and `Z` or a numeric offset;
/// the same without an offset (taken as UTC); and `M/D/YYYY h:mm:ss AM/PM` (UTC).
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    // Years outside 1970-9999 (Go's zero time, negative years) are not real event times, and
    // would not survive every storage format: treat them as absent.
    parse_timestamp_any(s).filter(|t| (1970..=9999).contains(&chrono::Datelike::year(t)))
}

fn parse_timestamp_any(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    const NAIVE_FORMATS: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%m/%d/%Y %I:%M:%S %p",
        "%m/%d/%Y %H:%M:%S",
    ];
    NAIVE_FORMATS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

/// [`parse_timestamp`] of a JSON value; `None` unless it is a parseable string.
pub fn lenient_timestamp(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str).and_then(parse_timestamp)
}

/// Follow a chain of object keys.
pub fn get_path<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |cur, k| cur.as_object()?.get(*k))
}

/// Join a parent JSON path and a key: `join("data", "essentials")` is `data.essentials`.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() || parent == "$" {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `obj[key]` as an object, which must be present. `path` is the path of `obj`.
pub fn required_object<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Map<String, Value>, PayloadError> {
    let field = join(path, key);
    match obj.get(key) {
        None | Some(Value::Null) => Err(PayloadError::new(field, "is required")),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(PayloadError::new(
            field,
            format!("must be an object, got {}", type_name(other)),
        )),
    }
}

/// `obj[key]` as a string; absent or null is `None`, any other type is an error.
pub fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, PayloadError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(PayloadError::new(
            join(path, key),
            format!("must be a string, got {}", type_name(other)),
        )),
    }
}

/// `obj[key]` as a non-empty string, which must be present.
pub fn required_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a str, PayloadError> {
    match optional_str(obj, key, path)? {
        None => Err(PayloadError::new(join(path, key), "is required")),
        Some(s) if s.trim().is_empty() => {
            Err(PayloadError::new(join(path, key), "must not be empty"))
        }
        Some(s) => Ok(s),
    }
}

/// `obj[key]` as an array of strings; absent or null is an empty list, anything else an error
/// naming the field (or the offending element, as `key[i]`).
pub fn optional_str_array(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Vec<String>, PayloadError> {
    let field = join(path, key);
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(PayloadError::new(
                    format!("{field}[{i}]"),
                    format!("must be a string, got {}", type_name(other)),
                )),
            })
            .collect(),
        Some(other) => Err(PayloadError::new(
            field,
            format!("must be an array of strings, got {}", type_name(other)),
        )),
    }
}

/// Cut `s` to at most `max` characters (on a character boundary), marking the cut with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn lenient_string_formats_scalars() {
        assert_eq!(lenient_string(&json!("25")), Some("25".into()));
        assert_eq!(lenient_string(&json!(25)), Some("25".into()));
        assert_eq!(lenient_string(&json!(7.727)), Some("7.727".into()));
        assert_eq!(lenient_string(&json!(true)), Some("true".into()));
        assert_eq!(lenient_string(&json!(null)), None);
        assert_eq!(lenient_string(&json!([1])), None);
        assert_eq!(lenient_string(&json!({"a": 1})), None);
    }

    #[test]
    fn lenient_field_skips_empty() {
        let m = json!({"a": "", "b": " ", "c": 3, "d": null});
        let m = m.as_object().unwrap();
        assert_eq!(lenient_field(m, "a"), None);
        assert_eq!(lenient_field(m, "b"), None);
        assert_eq!(lenient_field(m, "c"), Some("3".into()));
        assert_eq!(lenient_field(m, "d"), None);
        assert_eq!(lenient_field(m, "missing"), None);
    }

    #[test]
    fn array_or_json_string_accepts_both_forms() {
        let real = json!([{"ServiceName": "A"}]);
        let encoded = json!("[{\"ServiceName\":\"A\"}]");
        assert_eq!(array_or_json_string(&real), array_or_json_string(&encoded));
        assert_eq!(array_or_json_string(&real).unwrap().len(), 1);
        assert_eq!(array_or_json_string(&json!("not json")), None);
        assert_eq!(array_or_json_string(&json!("{\"a\":1}")), None);
        assert_eq!(array_or_json_string(&json!(5)), None);
        assert_eq!(array_or_json_string(&json!(null)), None);
    }

    #[test]
    fn timestamps_with_any_fraction_and_offset() {
        let t = parse_timestamp("2019-03-22T13:58:24.3713213Z").unwrap();
        assert_eq!(t.timestamp(), utc(2019, 3, 22, 13, 58, 24).timestamp());
        assert_eq!(t.timestamp_subsec_nanos(), 371_321_300);
        assert_eq!(
            parse_timestamp("2019-03-22T13:56:31.2917159+00:00").map(|t| t.timestamp()),
            Some(utc(2019, 3, 22, 13, 56, 31).timestamp())
        );
        assert_eq!(
            parse_timestamp("2024-05-01T10:00:00.123456789Z").map(|t| t.timestamp()),
            Some(utc(2024, 5, 1, 10, 0, 0).timestamp())
        );
        assert_eq!(
            parse_timestamp("2020-07-07T13:54:34Z"),
            Some(utc(2020, 7, 7, 13, 54, 34))
        );
        assert_eq!(
            parse_timestamp("2019-08-26T10:34:14+02:00"),
            Some(utc(2019, 8, 26, 8, 34, 14))
        );
    }

    #[test]
    fn timestamps_without_offset_are_utc() {
        assert_eq!(
            parse_timestamp("2021-11-15T15:16:49"),
            Some(utc(2021, 11, 15, 15, 16, 49))
        );
        assert_eq!(
            parse_timestamp("2021-11-15T15:16:49.0000000"),
            Some(utc(2021, 11, 15, 15, 16, 49))
        );
    }

    #[test]
    fn old_log_alert_timestamps() {
        assert_eq!(
            parse_timestamp("3/22/2019 1:36:31 PM"),
            Some(utc(2019, 3, 22, 13, 36, 31))
        );
        assert_eq!(
            parse_timestamp("12/1/2019 12:05:00 AM"),
            Some(utc(2019, 12, 1, 0, 5, 0))
        );
        assert_eq!(
            parse_timestamp("03/22/2019 11:59:59 am"),
            Some(utc(2019, 3, 22, 11, 59, 59))
        );
    }

    #[test]
    fn bad_timestamps_are_none() {
        for s in [
            "",
            "  ",
            "yesterday",
            "2019-13-40T00:00:00Z",
            "3/22/2019",
            "1.5",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s:?}");
        }
        assert_eq!(lenient_timestamp(Some(&json!(12345))), None);
        assert_eq!(lenient_timestamp(None), None);
    }

    #[test]
    fn strict_accessors_name_the_path() {
        let v = json!({"s": "x", "n": 3, "e": "", "arr": ["a", 1], "str": "a", "o": []});
        let m = v.as_object().unwrap();
        assert_eq!(required_str(m, "s", "data").unwrap(), "x");
        let e = required_str(m, "n", "data").unwrap_err();
        assert_eq!(e.field, "data.n");
        assert_eq!(e.problem, "must be a string, got a number");
        assert_eq!(
            required_str(m, "e", "data").unwrap_err().problem,
            "must not be empty"
        );
        assert_eq!(
            required_str(m, "zz", "data").unwrap_err().problem,
            "is required"
        );
        assert_eq!(optional_str(m, "zz", "data").unwrap(), None);
        let e = optional_str_array(m, "arr", "data").unwrap_err();
        assert_eq!(e.field, "data.arr[1]");
        let e = optional_str_array(m, "str", "data").unwrap_err();
        assert_eq!(e.field, "data.str");
        assert_eq!(e.problem, "must be an array of strings, got a string");
        let e = required_object(m, "o", "$").unwrap_err();
        assert_eq!(e.field, "o");
        assert_eq!(e.problem, "must be an object, got an array");
    }

    #[test]
    fn get_path_and_truncate() {
        let v = json!({"a": {"b": {"c": 1}}});
        assert_eq!(get_path(&v, &["a", "b", "c"]), Some(&json!(1)));
        assert_eq!(get_path(&v, &["a", "x"]), None);
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo", 2), "hé…");
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth_with_their_path() {
        let dup = |t: &str| match parse_strict(t) {
            Err(StrictError::Duplicate { path, key }) => (path, key),
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(dup(r#"{"a":1,"a":2}"#), ("a".into(), "a".into()));
        assert_eq!(
            dup(r#"{"data":{"essentials":{"alertId":"x","b":[],"alertId":"y"}}}"#),
            ("data.essentials.alertId".into(), "alertId".into())
        );
        assert_eq!(
            dup(r#"{"alerts":[{"labels":{}},{"labels":{"s":1,"s":1}}]}"#),
            ("alerts[1].labels.s".into(), "s".into())
        );
        assert_eq!(
            dup(r#"[[{"k":{"x":0}, "k":0}]]"#),
            ("[0][0].k".into(), "k".into())
        );
        // Escapes decode first: "\u0061" is "a".
        assert_eq!(dup(r#"{"a":1,"\u0061":2}"#).0, "a");
        // Equal keys in different objects are fine; so are near-equal ones.
        let v = parse_strict(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}],"A":0,"a ":0}"#).unwrap();
        assert_eq!(v["b"][1]["a"], 2);
        // A caller-sized key is cut in the path.
        let long = "k".repeat(10_000);
        let (path, _) = dup(&format!(r#"{{"{long}":1,"{long}":2}}"#));
        assert!(path.len() < 100, "{path}");
        // Not JSON stays a syntax error; so does trailing garbage.
        assert!(matches!(parse_strict("{"), Err(StrictError::Syntax(_))));
        assert!(matches!(parse_strict("{} x"), Err(StrictError::Syntax(_))));
        // A list inside a string is strict too.
        assert_eq!(array_or_json_string(&json!(r#"[{"a":1,"a":2}]"#)), None);
    }

    #[test]
    fn strict_parsing_agrees_with_serde_json_on_every_fixture() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut stack = vec![root];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        assert_eq!(parse_strict(&text).unwrap(), v, "{}", p.display());
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 20, "{seen}");
    }
}
