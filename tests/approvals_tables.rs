//! Approvals on Azure Table Storage (Azurite), through two hub instances on the same tables:
//! two approvers signing the same approval at the same moment lose no signature and reach
//! exactly one final state; an approval racing a rejection ends either approved or rejected,
//! never both; concurrent requests get distinct, gapless ids.

mod support;

use icahub::config::{Config, Secret, StorageConfig};
use icahub::domain::identity::Role;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use support::azurite;
use support::hub::{Reply, TestHub};

const APPROVAL: &str = "/api/v1/azdev/approval";

fn tables_config(prefix: String) -> Config {
    let mut c = Config::embedded("unused");
    c.storage = StorageConfig::Tables {
        connection_string: Secret::new(azurite::connection_string()),
        table_prefix: prefix,
    };
    c.store_timeout = Duration::from_secs(10);
    c
}

async fn person(hub: &TestHub, name: &str, roles: &[Role]) -> String {
    hub.person(name, roles).await
}

async fn post_as(base: String, key: String, path: String, body: Value) -> Reply {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    Reply::read(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_approvers_at_the_same_moment_on_two_instances() {
    let prefix = azurite::unique_prefix("apr");
    let a = TestHub::start(tables_config(prefix.clone())).await;
    let b = TestHub::start(tables_config(prefix)).await;
    let dave = person(&a, "dave", &[Role::Devops]).await;
    let alice = person(&a, "alice", &[Role::TechnicalApprover]).await;
    let bob = person(&a, "bob", &[Role::BusinessApprover]).await;
    let zoe = person(&a, "zoe", &[Role::BusinessApprover]).await;

    // 20 requests at once, half through each instance: distinct ids 1..=20.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let base = if i % 2 == 0 {
            a.base.clone()
        } else {
            b.base.clone()
        };
        let body =
            json!({"run_id": format!("r{i}"), "deployment_target": "staging", "estimated_cost": 1});
        tasks.push(tokio::spawn(post_as(
            base,
            dave.clone(),
            APPROVAL.into(),
            body,
        )));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.json["approval_id"].as_str().unwrap().to_string());
    }
    let seqs: HashSet<u64> = ids
        .iter()
        .map(|id| icahub::domain::approval::parse_approval_id(id).unwrap().1)
        .collect();
    assert_eq!(seqs, (1..=20).collect::<HashSet<u64>>());

    // First ten: technical and business at the same moment, on different instances.
    for id in &ids[..10] {
        let path = format!("{APPROVAL}/{id}/sign");
        let t = tokio::spawn(post_as(
            a.base.clone(),
            alice.clone(),
            path.clone(),
            json!({"approval_type": "technical", "decision": "approved"}),
        ));
        let s = tokio::spawn(post_as(
            b.base.clone(),
            bob.clone(),
            path,
            json!({"approval_type": "business", "decision": "approved"}),
        ));
        let (t, s) = (t.await.unwrap(), s.await.unwrap());
        assert_eq!((t.status, s.status), (200, 200), "{} / {}", t.text, s.text);
        let g = a.get(&format!("{APPROVAL}/{id}")).await;
        assert_eq!(g.json["status"], "approved", "{}", g.text);
        assert_eq!(
            g.json["signatures"].as_array().unwrap().len(),
            2,
            "no signature lost"
        );
        // Exactly one of the two answers saw the final state.
        let finals = [&t, &s]
            .iter()
            .filter(|r| r.json["status"] == "approved")
            .count();
        assert_eq!(finals, 1, "{} / {}", t.text, s.text);
    }

    // Last ten: an approval racing a rejection of the same half by two business approvers.
    for id in &ids[10..] {
        let path = format!("{APPROVAL}/{id}/sign");
        let yes = tokio::spawn(post_as(
            a.base.clone(),
            bob.clone(),
            path.clone(),
            json!({"approval_type": "business", "decision": "approved"}),
        ));
        let no = tokio::spawn(post_as(
            b.base.clone(),
            zoe.clone(),
            path,
            json!({"approval_type": "business", "decision": "rejected", "comments": "budget freeze"}),
        ));
        let (yes, no) = (yes.await.unwrap(), no.await.unwrap());
        let mut statuses = [yes.status, no.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "one wins: {} / {}", yes.text, no.text);
        let g = b.get(&format!("{APPROVAL}/{id}")).await;
        assert_eq!(g.json["signatures"].as_array().unwrap().len(), 1);
        let expected = if yes.status == 200 {
            "pending"
        } else {
            "rejected"
        };
        assert_eq!(g.json["status"], expected, "{}", g.text);
    }
    a.stop().await;
    b.stop().await;
}
