//! Imports go one way (docs/architecture.md): `domain/` is pure and imports nothing else of the
//! crate; `storage/` imports only `domain/` and the `secret` leaf; `config/` imports only
//! `domain/` and `secret`; `services/` never reach up into `http/`, `cli/` or the app. This test
//! reads the source and names every line that breaks a rule (doc comments may link anywhere).

use std::path::{Path, PathBuf};

/// A layer: its folder under src/, and the crate modules its code may name besides itself.
struct Rule {
    dir: &'static str,
    allowed: &'static [&'static str],
    /// Modules it may never name, when `allowed` is not a closed list.
    forbidden: &'static [&'static str],
}

const RULES: &[Rule] = &[
    Rule {
        dir: "domain",
        allowed: &["domain"],
        forbidden: &[],
    },
    Rule {
        dir: "storage",
        // `store_conformance_tests` is the conformance suite's macro (tests only).
        allowed: &["storage", "domain", "secret", "store_conformance_tests"],
        forbidden: &[],
    },
    Rule {
        dir: "config",
        allowed: &["config", "domain", "secret"],
        forbidden: &[],
    },
    Rule {
        dir: "services",
        allowed: &[],
        forbidden: &["http", "cli", "app", "startup", "server", "jobs", "error"],
    },
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::<module>` a line of code names (comments left out).
fn crate_modules(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `icahub::crate::` cannot occur; a preceding identifier character means another path
        // (`$crate::`, `other_crate::`), which is not this crate's module tree.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            found.push(name);
        }
        rest = after;
    }
    found
}

#[test]
fn imports_go_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for rule in RULES {
        let mut files = Vec::new();
        rust_files(&src.join(rule.dir), &mut files);
        assert!(!files.is_empty(), "src/{} has no Rust files", rule.dir);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a source file");
            for (n, line) in text.lines().enumerate() {
                for m in crate_modules(line) {
                    if m.is_empty() {
                        problems.push(format!(
                            "{}:{}: a grouped `crate::{{…}}` import: name each `crate::<module>::` path so the layers can be checked",
                            file.strip_prefix(&src).unwrap_or(&file).display(),
                            n + 1
                        ));
                        continue;
                    }
                    let bad = if rule.allowed.is_empty() {
                        rule.forbidden.contains(&m.as_str())
                    } else {
                        !rule.allowed.contains(&m.as_str())
                    };
                    if bad {
                        problems.push(format!(
                            "{}:{}: src/{} may not use crate::{m}",
                            file.strip_prefix(&src).unwrap_or(&file).display(),
                            n + 1,
                            rule.dir
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the layers:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scanner_sees_what_it_must() {
    assert_eq!(crate_modules("use crate::http::auth;"), ["http"]);
    assert_eq!(
        crate_modules("let x = crate::storage::open(&s); // crate::cli in a comment"),
        ["storage"]
    );
    assert!(crate_modules("//! [`crate::http`] is only a link").is_empty());
    assert!(crate_modules("$crate::storage::conformance::run").is_empty());
    assert_eq!(crate_modules("use crate::{http, cli};"), [""]);
}
