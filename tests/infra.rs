//! infra/ (Terraform) against the code: every file parses as HCL; every variable and output is
//! documented; and the app settings Terraform writes are exactly the settings the hub reads,
//! minus a short, explained list each way. `scripts/checkov.sh` (run by the test command) checks
//! the same files for security misconfigurations.

use hcl::{Block, Body, Expression, ObjectKey};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == ".terraform") {
                continue;
            }
            files(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

fn parse(p: &Path) -> Body {
    let text = std::fs::read_to_string(p).unwrap();
    hcl::parse(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", p.display()))
}

/// The root module's files (infra/*.tf, not examples/).
fn root_module() -> Vec<(PathBuf, Body)> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("infra"))
        .expect("infra/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "infra/ has no .tf files");
    v.into_iter().map(|p| (p.clone(), parse(&p))).collect()
}

fn label(b: &Block, i: usize) -> String {
    b.labels
        .get(i)
        .map(|l| l.as_str().to_string())
        .unwrap_or_default()
}

fn blocks<'a>(bodies: &'a [(PathBuf, Body)], kind: &'a str) -> impl Iterator<Item = &'a Block> {
    bodies
        .iter()
        .flat_map(|(_, b)| b.blocks())
        .filter(move |b| b.identifier.as_str() == kind)
}

#[test]
fn every_terraform_file_parses() {
    let mut all = Vec::new();
    files(&root().join("infra"), "tf", &mut all);
    files(&root().join("infra"), "tfvars", &mut all);
    assert!(
        all.iter().any(|p| p.to_string_lossy().contains("examples")),
        "{all:?}"
    );
    for p in &all {
        parse(p);
    }
}

#[test]
fn variables_and_outputs_are_documented_and_the_provider_is_azurerm_4() {
    let m = root_module();
    let vars: Vec<&Block> = blocks(&m, "variable").collect();
    assert!(vars.len() > 10);
    for v in vars {
        let has = |k: &str| v.body.attributes().any(|a| a.key.as_str() == k);
        assert!(
            has("description"),
            "variable {} has no description",
            label(v, 0)
        );
        assert!(has("type"), "variable {} has no type", label(v, 0));
    }
    for o in blocks(&m, "output") {
        assert!(
            o.body.attributes().any(|a| a.key.as_str() == "description"),
            "output {} has no description",
            label(o, 0)
        );
    }
    let versions = m
        .iter()
        .map(|(p, _)| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
    assert!(versions.contains("hashicorp/azurerm"), "azurerm provider");
    assert!(
        versions.contains("\"~> 4.") || versions.contains("\">= 4."),
        "azurerm 4.x is required"
    );
    let kinds: BTreeSet<String> = blocks(&m, "resource").map(|r| label(r, 0)).collect();
    for needed in [
        "azurerm_resource_group",
        "azurerm_storage_account",
        "azurerm_service_plan",
        "azurerm_function_app_flex_consumption",
        "azurerm_user_assigned_identity",
        "azurerm_role_assignment",
        "azurerm_key_vault",
        "azurerm_key_vault_secret",
        "azurerm_application_insights",
        "azurerm_monitor_action_group",
        "azurerm_monitor_metric_alert",
    ] {
        assert!(kinds.contains(needed), "no {needed} in infra/: {kinds:?}");
    }
}

/// The Function App's `app_settings`, which must be a literal object: key → value.
fn terraform_settings() -> std::collections::BTreeMap<String, Expression> {
    let m = root_module();
    let apps: Vec<&Block> = blocks(&m, "resource")
        .filter(|r| label(r, 0) == "azurerm_function_app_flex_consumption")
        .collect();
    assert_eq!(apps.len(), 1, "one Flex Consumption function app");
    let attr = apps[0]
        .body
        .attributes()
        .find(|a| a.key.as_str() == "app_settings")
        .expect("app_settings");
    let Expression::Object(obj) = &attr.expr else {
        panic!(
            "app_settings must be a literal object so its keys can be read: {:?}",
            attr.expr
        )
    };
    obj.iter()
        .map(|(k, v)| {
            let k = match k {
                ObjectKey::Identifier(i) => i.as_str().to_string(),
                ObjectKey::Expression(Expression::String(s)) => s.clone(),
                other => panic!("app_settings key is not a literal: {other:?}"),
            };
            (k, v.clone())
        })
        .collect()
}

/// Every setting name written as a string literal in src/ (outside assertions).
fn settings_in_code() -> BTreeSet<String> {
    let mut srcs = Vec::new();
    files(&root().join("src"), "rs", &mut srcs);
    let mut out = BTreeSet::new();
    for p in srcs {
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            if line.contains("assert") {
                continue;
            }
            for (i, _) in line.match_indices('"') {
                let rest = &line[i + 1..];
                let Some(end) = rest.find('"') else { continue };
                let lit = &rest[..end];
                let setting = ["ICAHUB_", "AzureWebJobs", "FUNCTIONS_", "IDENTITY_"]
                    .iter()
                    .any(|p| lit.starts_with(p))
                    && lit.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !lit.ends_with('_');
                if setting {
                    out.insert(lit.to_string());
                }
            }
        }
    }
    out
}

/// Read by the hub, deliberately not written by Terraform.
const NOT_FROM_TERRAFORM: &[(&str, &str)] = &[
    (
        "FUNCTIONS_CUSTOMHANDLER_PORT",
        "set by the Functions host for each worker",
    ),
    (
        "IDENTITY_ENDPOINT",
        "set by the platform (managed identity endpoint)",
    ),
    (
        "IDENTITY_HEADER",
        "set by the platform (managed identity endpoint secret)",
    ),
    (
        "ICAHUB_TABLES_CONNECTION_STRING",
        "key-based access; the deployment uses the managed identity",
    ),
    (
        "AzureWebJobsStorage",
        "key-based access; shared keys are off on the account",
    ),
    (
        "ICAHUB_DATA_DIR",
        "the embedded store, refused under the Functions host",
    ),
    (
        "ICAHUB_DISPATCH_INTERVAL_SECS",
        "only outside the host; the dispatch timer function drains",
    ),
    (
        "ICAHUB_ROUTING_FILE",
        "a file path; the deployment passes ICAHUB_ROUTING inline",
    ),
    ("ICAHUB_BENCH_KEY", "`icahub bench` only"),
    (
        "ICAHUB_HEADER_TIMEOUT_SECS",
        "connection limits: the defaults fit the Functions host's forwarding",
    ),
    (
        "ICAHUB_BODY_TIMEOUT_SECS",
        "connection limits: the defaults fit the Functions host's forwarding",
    ),
    (
        "ICAHUB_IDLE_TIMEOUT_SECS",
        "connection limits: the defaults fit the Functions host's forwarding",
    ),
    (
        "ICAHUB_MAX_CONNECTIONS",
        "connection limits: the defaults fit the Functions host's forwarding",
    ),
    (
        "ICAHUB_TABLES_CREDENTIAL",
        "operators' workstations (azure_cli); the app uses the default",
    ),
];

/// Written by Terraform for the Functions host and platform, not read by the hub.
const FOR_THE_HOST: &[&str] = &[
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
];

#[test]
fn terraform_sets_exactly_the_settings_the_hub_reads() {
    let vars: BTreeSet<String> = icahub::config::VARS
        .iter()
        .map(|(n, _, _)| n.to_string())
        .collect();
    let code = settings_in_code();
    let undocumented: Vec<&String> = code.difference(&vars).collect();
    assert!(
        undocumented.is_empty(),
        "read in src/ but missing from config::VARS (and so from the README table): {undocumented:?}"
    );

    let skip: BTreeSet<String> = NOT_FROM_TERRAFORM
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    for s in &skip {
        assert!(
            vars.contains(s),
            "{s} is excused but the hub does not read it"
        );
    }
    let expected: BTreeSet<String> = vars.difference(&skip).cloned().collect();
    let all = terraform_settings();
    // A setting the hub must not get may still be written empty, to blank out a value the
    // provider adds itself (AzureWebJobsStorage, see infra/functionapp.tf): empty is unset.
    let tf: BTreeSet<String> = all
        .iter()
        .filter(|(k, v)| !(skip.contains(*k) && matches!(v, Expression::String(s) if s.is_empty())))
        .map(|(k, _)| k.clone())
        .collect();
    let host: BTreeSet<String> = FOR_THE_HOST.iter().map(|s| s.to_string()).collect();
    let written: BTreeSet<String> = tf.difference(&host).cloned().collect();

    let missing: Vec<&String> = expected.difference(&written).collect();
    let unread: Vec<&String> = written.difference(&expected).collect();
    assert!(
        missing.is_empty() && unread.is_empty(),
        "read by the hub but not set by Terraform: {missing:?}\n\
         set by Terraform but read by neither the hub nor the host: {unread:?}"
    );
    let excused_but_set: Vec<&String> = tf.intersection(&skip).collect();
    assert!(
        excused_but_set.is_empty(),
        "Terraform gives these a value: {excused_but_set:?}"
    );
}

/// The secrets the hub reads reach it as Key Vault references, never as plain values.
#[test]
fn secrets_are_key_vault_references() {
    let text: String = root_module()
        .iter()
        .map(|(p, _)| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        text.contains("@Microsoft.KeyVault(SecretUri="),
        "no Key Vault references"
    );
    let m = root_module();
    let app = blocks(&m, "resource")
        .find(|r| label(r, 0) == "azurerm_function_app_flex_consumption")
        .unwrap();
    let settings = app
        .body
        .attributes()
        .find(|a| a.key.as_str() == "app_settings")
        .unwrap();
    let Expression::Object(obj) = &settings.expr else {
        unreachable!()
    };
    let mut checked = 0;
    for (k, v) in obj.iter() {
        let key = match k {
            ObjectKey::Identifier(i) => i.as_str().to_string(),
            ObjectKey::Expression(Expression::String(s)) => s.clone(),
            _ => continue,
        };
        let secret = [
            "ICAHUB_MATTERMOST_WEBHOOK_URL",
            "ICAHUB_MATTERMOST_WEBHOOKS",
            "ICAHUB_MATTERMOST_TOKEN",
            "ICAHUB_MATTERMOST_ACTION_SECRETS",
            "ICAHUB_PAGERDUTY_ROUTING_KEY",
            "ICAHUB_PAGERDUTY_ROUTING_KEYS",
            "ICAHUB_WEBHOOK_SECRETS",
            "ICAHUB_CONTROL_PLANE_TOKEN",
            "ICAHUB_CONTROL_PLANE_SIGNING_SECRETS",
            "ICAHUB_AZDO_HOOK_PASSWORD",
            "ICAHUB_AZDO_HOOK_SECRET",
        ]
        .contains(&key.as_str());
        if secret {
            // As HCL: every secret goes through the Key Vault reference map, never a variable.
            let expr = hcl::format::to_string(v).unwrap();
            assert!(
                expr.starts_with("local.secret_ref["),
                "{key} = {expr}: a secret must be a Key Vault reference (local.secret_ref[...])"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 11, "every secret setting is in app_settings");
}
