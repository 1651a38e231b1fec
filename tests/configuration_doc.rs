//! docs/configuration.md against the settings table in code, `icahub::config::VARS`: every
//! variable is documented exactly once, with the default the code states, and the docs name no
//! `ICAHUB_*` variable the hub does not read. So the table in code stays the one source of truth
//! and the page cannot drift from it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cells of a Markdown table row; `\|` inside a cell is not a separator.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

/// A cell that is one code span, `` `x` ``, is `x`; any other cell is taken as written.
fn unquote(cell: &str) -> &str {
    match cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
        Some(inner) if !inner.contains('`') => inner,
        _ => cell,
    }
}

/// The rows of docs/configuration.md's variable tables: (line number, name, default). A row is a
/// table line whose first cell is one code span holding a variable name.
fn documented(text: &str) -> Vec<(usize, String, String)> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if !line.trim_start().starts_with('|') {
            continue;
        }
        let c = cells(line);
        let name = unquote(&c[0]);
        if name == c[0] || name.is_empty() {
            continue; // a header, a separator, or a row of another kind of table
        }
        if !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            continue;
        }
        assert!(
            c.len() >= 3,
            "docs/configuration.md:{}: a variable row needs name, default and meaning",
            i + 1
        );
        rows.push((i + 1, name.to_string(), unquote(&c[1]).to_string()));
    }
    rows
}

/// Every `ICAHUB_…` word in `text`, with its line number.
fn icahub_names(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("ICAHUB_") {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == '_') {
                out.push((i + 1, tail[..len].to_string()));
            }
            rest = &tail[len..];
        }
    }
    out
}

fn vars() -> BTreeMap<&'static str, &'static str> {
    let mut m = BTreeMap::new();
    for (name, default, _) in icahub::config::VARS {
        assert!(
            m.insert(*name, *default).is_none(),
            "{name} is twice in config::VARS"
        );
    }
    m
}

/// A name the hub reads, or a prefix written as `ICAHUB_ENTRA_*` of names it reads.
fn known(name: &str, vars: &BTreeMap<&str, &str>) -> bool {
    if vars.contains_key(name) {
        return true;
    }
    let prefix = name.ends_with('_') && name.len() > "ICAHUB_".len();
    prefix && vars.keys().any(|v| v.starts_with(name))
}

#[test]
fn every_variable_is_documented_once_with_its_default() {
    let vars = vars();
    let text = read(&root().join("docs/configuration.md"));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for (line, name, default) in documented(&text) {
        if let Some(first) = seen.insert(name.clone(), line) {
            problems.push(format!(
                "line {line}: {name} is documented again (first at line {first})"
            ));
        }
        match vars.get(name.as_str()) {
            None => problems.push(format!(
                "line {line}: {name} is documented but not in config::VARS (the hub does not read it)"
            )),
            Some(code) if *code != default => problems.push(format!(
                "line {line}: {name}: the doc says the default is {default:?}, config::VARS says {code:?}"
            )),
            Some(_) => {}
        }
    }
    for name in vars.keys() {
        if !seen.contains_key(*name) {
            problems.push(format!(
                "{name} is in config::VARS but has no row in docs/configuration.md"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_configuration_page_and_the_readme_name_only_variables_the_hub_reads() {
    let vars = vars();
    let mut problems = Vec::new();
    for file in ["docs/configuration.md", "README.md"] {
        for (line, name) in icahub_names(&read(&root().join(file))) {
            if !known(&name, &vars) {
                problems.push(format!("{file}:{line}: {name} is not in config::VARS"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The other pages may also name the variables of the scripts (the pipeline hook script, the fuzz
/// script), which the hub does not read: those must at least be read by a script.
#[test]
fn the_docs_name_only_variables_the_hub_or_a_script_reads() {
    let vars = vars();
    let mut scripts = String::new();
    for dir in ["scripts", "templates"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                scripts.push_str(&read(&p));
            }
        }
    }
    let script_vars: BTreeSet<String> =
        icahub_names(&scripts).into_iter().map(|(_, n)| n).collect();
    let mut problems = Vec::new();
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            for (line, name) in icahub_names(&read(&p)) {
                if !known(&name, &vars) && !script_vars.contains(&name) {
                    problems.push(format!(
                        "{}:{line}: {name} is read by neither the hub (config::VARS) nor a script",
                        p.display()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_parser_reads_rows_as_written() {
    assert_eq!(cells("| `A` | `x\\|y` | z |"), vec!["`A`", "`x|y`", "z"]);
    assert_eq!(unquote("`5`"), "5");
    assert_eq!(unquote("unset"), "unset");
    assert_eq!(unquote("`a` or `b`"), "`a` or `b`");
    let rows = documented(
        "| Variable | Default | Meaning |\n| --- | --- | --- |\n| `ICAHUB_X` | `1` | one |\n",
    );
    assert_eq!(rows, vec![(3, "ICAHUB_X".to_string(), "1".to_string())]);
    assert_eq!(
        icahub_names("`ICAHUB_A`, XICAHUB_B and ICAHUB_C_*"),
        vec![(1, "ICAHUB_A".to_string()), (1, "ICAHUB_C_".to_string())]
    );
}
