//! Property tests of the approval state machine (`icahub::domain::approval`, pure): any sequence
//! of signatures (either half, either decision, by anyone holding any roles, the requester and
//! the run's trigger included, names in any case), emergency overrides, the clock moving, the
//! sweep and the run reaching the ledger late ends in a legal state, and separation of duties
//! holds at every step:
//!
//! - an approval approved by signatures has a technical and a business approval from two
//!   different people holding the matching roles, neither the requester nor the run's trigger;
//! - approved is final; rejected and expired change only through an emergency override, which
//!   takes two different people (an admin who asks, an override approver who confirms), neither
//!   the requester nor the trigger;
//! - an approval pending past its expiry is expired by the sweep, and cannot be signed.
//!
//! Each operation is applied as the approvals service applies it (`src/services/approvals/`): a
//! signature settles a lapsed override, expires an overdue approval instead of signing it, and
//! reads the trigger from the ledger ([`Approval::with_ledger`]); an override excludes the
//! trigger the ledger knows; the sweep expires what is overdue.
//!
//! "The trigger" is the one the ledger names when each person acts; an override's asker is checked
//! again when it is confirmed, so an asker the ledger later names as the trigger cannot have it
//! confirmed. One thing is not promised and not asserted: a staging approval signed before its
//! run reached the ledger cannot exclude the run's trigger (nobody could tell; production
//! approvals refuse to be signed then).

use chrono::{DateTime, Duration, TimeZone, Utc};
use icahub::domain::approval::{
    self, Approval, ApprovalRequest, ApprovalStatus, ApprovalType, Decision, OverrideStep, Policy,
    SignIn,
};
use icahub::domain::identity::Role;
use proptest::prelude::*;

const REQUESTER: &str = "pipeline";
const TRIGGER: &str = "carol";

/// Who acts: the requester and the trigger (also in other cases), and three others.
const PEOPLE: [&str; 8] = [
    "pipeline", "PIPELINE", "carol", "Carol", "alice", "ALICE", "bob", "dave",
];

/// The roles a person may hold for an act, chosen by a bit mask.
const ROLES: [Role; 5] = [
    Role::TechnicalApprover,
    Role::BusinessApprover,
    Role::Finance,
    Role::Admin,
    Role::OverrideApprover,
];

fn roles(mask: u8) -> Vec<Role> {
    ROLES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| *r)
        .collect()
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[derive(Debug, Clone)]
enum Op {
    Sign {
        who: usize,
        roles: u8,
        technical: bool,
        approve: bool,
        comment: bool,
    },
    Override {
        who: usize,
        roles: u8,
        reason: bool,
    },
    /// The clock moves on this many minutes.
    Advance(i64),
    /// The periodic sweep.
    Sweep,
    /// The run reaches the ledger (`run/start` or the Azure DevOps hook), naming its trigger.
    Report,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PEOPLE.len(), 0u8..32, any::<bool>(), prop::bool::weighted(0.8), prop::bool::weighted(0.9))
            .prop_map(|(who, roles, technical, approve, comment)| Op::Sign { who, roles, technical, approve, comment }),
        3 => (0..PEOPLE.len(), 0u8..32, prop::bool::weighted(0.9))
            .prop_map(|(who, roles, reason)| Op::Override { who, roles, reason }),
        2 => (0i64..=150).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
        1 => Just(Op::Report),
    ]
}

#[derive(Debug, Clone)]
struct Scenario {
    production: bool,
    /// Above the finance threshold: the business half needs finance.
    expensive: bool,
    /// The run was on the ledger when the approval was requested.
    created_with_trigger: bool,
    /// The ledger knows the run from the start (else only after a [`Op::Report`]).
    ledger_known: bool,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(op(), 0..40),
    )
        .prop_map(
            |(production, expensive, created_with_trigger, ledger_known, ops)| Scenario {
                production,
                expensive,
                created_with_trigger: created_with_trigger && ledger_known,
                ledger_known,
                ops,
            },
        )
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 9, 0, 0).unwrap()
}

fn new_approval(s: &Scenario, policy: &Policy) -> Approval {
    let req = ApprovalRequest {
        run_id: "42".into(),
        deployment_target: if s.production {
            "production"
        } else {
            "staging"
        }
        .into(),
        estimated_cost: Some(if s.expensive { 6000.0 } else { 100.0 }),
        checklist: serde_json::json!(["tests green"]),
        project: None,
        description: None,
    };
    Approval::new(
        approval::approval_id(2026, 1),
        req,
        "payments".into(),
        REQUESTER.into(),
        s.created_with_trigger.then(|| TRIGGER.to_string()),
        None,
        policy,
        t0(),
    )
}

/// What the model remembers beside the approval.
struct World {
    a: Approval,
    now: DateTime<Utc>,
    /// The trigger, once the ledger knows the run.
    ledger: Option<String>,
    /// The approval has been rejected or expired at some point.
    was_closed: bool,
}

/// The state is one the machine may be in, with separation of duties held.
fn check_legal(w: &World, policy: &Policy) -> Result<(), TestCaseError> {
    let a = &w.a;
    let tech = a.signature(ApprovalType::Technical);
    let biz = a.signature(ApprovalType::Business);
    let rejected = a
        .signatures
        .iter()
        .filter(|s| s.decision == Decision::Rejected)
        .count();
    let approved =
        |s: Option<&approval::Signature>| s.is_some_and(|s| s.decision == Decision::Approved);

    // Signatures: at most one per half, two different people, none the requester, each with
    // the role its half needs.
    prop_assert!(a.signatures.len() <= 2, "{:?}", a.signatures);
    if let [s1, s2] = a.signatures.as_slice() {
        prop_assert_ne!(s1.approval_type, s2.approval_type);
        prop_assert!(
            !same(&s1.by, &s2.by),
            "one person signed both halves: {a:?}"
        );
    }
    for s in &a.signatures {
        prop_assert!(!same(&s.by, &a.requested_by), "the requester signed: {a:?}");
        let need = match s.approval_type {
            ApprovalType::Technical => Role::TechnicalApprover,
            ApprovalType::Business => a.business_role(),
        };
        prop_assert_eq!(s.role, need);
    }
    prop_assert!(rejected <= 1);
    if a.override_.is_some() {
        prop_assert_eq!(a.status, ApprovalStatus::Approved);
    }

    match a.status {
        ApprovalStatus::Pending => {
            prop_assert!(tech.is_none() && rejected == 0, "{a:?}");
            prop_assert!(a.decided_at.is_none() && a.override_request.is_none());
        }
        ApprovalStatus::TechnicalApproved => {
            prop_assert!(approved(tech) && biz.is_none(), "{a:?}");
            prop_assert!(a.decided_at.is_none() && a.override_request.is_none());
        }
        ApprovalStatus::Approved => {
            prop_assert!(a.decided_at.is_some() && a.override_request.is_none());
            match &a.override_ {
                Some(o) => {
                    // Two people, neither the requester. (Neither the trigger the ledger knew
                    // when each acted: checked in `step`. An override may be asked for before
                    // the run is on the ledger, so the asker is not checked again later.)
                    let confirmed_by = o.confirmed_by.as_deref().unwrap_or_default();
                    prop_assert!(
                        !confirmed_by.is_empty() && !same(&o.by, confirmed_by),
                        "{o:?}"
                    );
                    for who in [o.by.as_str(), confirmed_by] {
                        prop_assert!(!same(who, &a.requested_by), "{o:?}");
                    }
                }
                None => {
                    prop_assert!(approved(tech) && approved(biz), "{a:?}");
                    prop_assert!(!w.was_closed, "closed, then approved without an override");
                    // Production approvals are signed only once the ledger names the trigger,
                    // and then the trigger cannot sign; a staging approval signed before its
                    // run was reported is the documented exception (nobody could tell).
                    if a.production {
                        for s in &a.signatures {
                            prop_assert!(!same(&s.by, TRIGGER), "the trigger signed: {a:?}");
                        }
                    }
                }
            }
        }
        ApprovalStatus::Rejected => {
            prop_assert!(a.decided_at.is_some() && a.reason.is_some());
            prop_assert!(a.override_request.is_none());
            prop_assert_eq!(rejected, 1);
            prop_assert_eq!(
                a.signatures.last().map(|s| s.decision),
                Some(Decision::Rejected)
            );
        }
        ApprovalStatus::Expired => {
            prop_assert!(a.decided_at.is_some() && a.reason.is_some());
            prop_assert!(a.override_request.is_none());
            prop_assert!(rejected == 0 && !(approved(tech) && approved(biz)), "{a:?}");
            prop_assert!(w.now >= a.expires_at);
        }
        ApprovalStatus::OverridePending => {
            let r = a
                .override_request
                .as_ref()
                .expect("override_pending has its request");
            prop_assert!(!matches!(
                r.previous_status,
                ApprovalStatus::Approved | ApprovalStatus::OverridePending
            ));
            prop_assert_eq!(r.expires_at, r.at + policy.override_window);
            prop_assert!(!same(&r.by, &a.requested_by));
        }
    }
    Ok(())
}

/// Apply `op` as the service does; `Ok(true)` when the approval changed.
fn step(w: &mut World, op: &Op, policy: &Policy) -> Result<bool, TestCaseError> {
    let before = w.a.clone();
    match op {
        Op::Advance(m) => {
            w.now += Duration::minutes(*m);
            return Ok(false);
        }
        Op::Report => {
            w.ledger = Some(TRIGGER.into());
            return Ok(false);
        }
        Op::Sweep => {
            if !w.a.status.is_final() && w.a.is_overdue(w.now) {
                w.a = approval::expire(&w.a, w.now);
            }
        }
        Op::Sign {
            who,
            roles: mask,
            technical,
            approve,
            comment,
        } => {
            let by = PEOPLE[*who];
            let input = SignIn {
                approval_type: if *technical {
                    ApprovalType::Technical
                } else {
                    ApprovalType::Business
                },
                decision: if *approve {
                    Decision::Approved
                } else {
                    Decision::Rejected
                },
                comments: comment.then(|| "checked".to_string()),
            };
            let a = w.a.settled(w.now);
            if a.is_overdue(w.now) {
                // Overdue: expired instead of signed.
                w.a = approval::expire(&a, w.now);
            } else {
                let signed = a
                    .with_ledger(w.ledger.as_deref())
                    .and_then(|a| approval::sign(&a, by, &roles(*mask), &input, "api", w.now));
                if let Ok((next, sig)) = signed {
                    // Who signed: allowed to, by the rules at signing time.
                    prop_assert!(!same(by, REQUESTER), "the requester signed");
                    if let Some(t) = &w.ledger {
                        prop_assert!(!same(by, t), "the trigger signed");
                    }
                    prop_assert!(!matches!(
                        before.status,
                        ApprovalStatus::Approved
                            | ApprovalStatus::Rejected
                            | ApprovalStatus::Expired
                    ));
                    prop_assert!(w.ledger.is_some() || !a.production);
                    prop_assert_eq!(next.signatures.last(), Some(&sig));
                    w.a = next;
                }
            }
        }
        Op::Override {
            who,
            roles: mask,
            reason,
        } => {
            let by = PEOPLE[*who];
            let held = roles(*mask);
            let mut a = w.a.clone();
            if let Some(t) = &w.ledger {
                a.run_triggered_by = Some(t.clone());
            }
            let reason = reason.then_some("an outage");
            let pending = a.settled(w.now).override_request;
            if let Ok((next, step)) =
                approval::emergency_override(&a, by, &held, reason, policy, w.now)
            {
                prop_assert_ne!(before.status, ApprovalStatus::Approved);
                prop_assert!(!same(by, REQUESTER));
                if let Some(t) = &w.ledger {
                    prop_assert!(!same(by, t), "the trigger overrode");
                }
                match step {
                    OverrideStep::Requested => {
                        prop_assert!(held.contains(&Role::Admin));
                        prop_assert_eq!(next.status, ApprovalStatus::OverridePending);
                    }
                    OverrideStep::Confirmed => {
                        let asked = pending.expect("a confirmation confirms a request");
                        prop_assert!(held.contains(&Role::OverrideApprover));
                        prop_assert!(!same(by, &asked.by), "one person made the override");
                        // The asker is checked again at confirmation, against the trigger the
                        // ledger names now (it may have been unknown when they asked).
                        if let Some(t) = &w.ledger {
                            prop_assert!(!same(&asked.by, t), "the trigger's override confirmed");
                        }
                        prop_assert_eq!(next.status, ApprovalStatus::Approved);
                    }
                }
                w.a = next;
            }
        }
    }
    let changed = w.a != before;
    if changed {
        // Every change is a new link, and signatures are only ever appended.
        prop_assert_ne!(&w.a.chain_head, &before.chain_head);
        prop_assert!(w.a.signatures.starts_with(&before.signatures));
        prop_assert!(w.a.signatures.len() <= before.signatures.len() + 1);
        // Approved is final; rejected and expired move only to an override request.
        prop_assert_ne!(before.status, ApprovalStatus::Approved, "approved changed");
        if matches!(
            before.status,
            ApprovalStatus::Rejected | ApprovalStatus::Expired
        ) {
            prop_assert_eq!(w.a.status, ApprovalStatus::OverridePending);
        }
        // Approved only by the second half of an open approval (an override request that
        // lapsed leaves it open again) or by a confirmed override.
        if w.a.status == ApprovalStatus::Approved {
            prop_assert!(
                w.a.override_.is_some()
                    || matches!(
                        before.settled(w.now).status,
                        ApprovalStatus::Pending | ApprovalStatus::TechnicalApproved
                    )
            );
        }
    }
    if matches!(
        w.a.status,
        ApprovalStatus::Rejected | ApprovalStatus::Expired
    ) {
        w.was_closed = true;
    }
    Ok(changed)
}

fn run(s: &Scenario) -> Result<World, TestCaseError> {
    let policy = Policy::default();
    let mut w = World {
        a: new_approval(s, &policy),
        now: t0(),
        ledger: s.ledger_known.then(|| TRIGGER.to_string()),
        was_closed: false,
    };
    check_legal(&w, &policy)?;
    for op in &s.ops {
        step(&mut w, op, &policy)?;
        check_legal(&w, &policy)?;
    }
    Ok(w)
}

/// The generated sequences reach every status, and approval both ways, so the properties
/// above are not vacuous (a fixed seed: the same sequences every run).
#[test]
fn the_sequences_reach_every_state() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut seen, mut by_override, mut by_signatures) = (Vec::new(), 0, 0);
    for _ in 0..2000 {
        let s = scenario()
            .new_tree(&mut runner)
            .expect("a scenario")
            .current();
        let policy = Policy::default();
        let mut w = World {
            a: new_approval(&s, &policy),
            now: t0(),
            ledger: s.ledger_known.then(|| TRIGGER.to_string()),
            was_closed: false,
        };
        for op in &s.ops {
            step(&mut w, op, &policy).expect("a legal step");
            if !seen.contains(&w.a.status) {
                seen.push(w.a.status);
            }
        }
        if w.a.status == ApprovalStatus::Approved {
            if w.a.override_.is_some() {
                by_override += 1;
            } else {
                by_signatures += 1;
            }
        }
    }
    for status in ApprovalStatus::ALL {
        assert!(seen.contains(&status), "never reached {status:?}");
    }
    assert!(
        by_override > 0 && by_signatures > 0,
        "override {by_override}, signatures {by_signatures}"
    );
}

fn config(cases: u32) -> ProptestConfig {
    // Integration tests have no lib.rs beside them for proptest's regression files.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn any_sequence_ends_in_a_legal_state_with_duties_separated(s in scenario()) {
        run(&s)?;
    }

    /// Past its expiry and undecided, an approval cannot be signed, and the sweep expires it.
    #[test]
    fn an_overdue_approval_expires_and_takes_no_signature(s in scenario(), who in 0..PEOPLE.len()) {
        let policy = Policy::default();
        let mut w = run(&s)?;
        w.now += policy.expiry + Duration::minutes(1);
        let a = w.a.settled(w.now);
        if matches!(a.status, ApprovalStatus::Pending | ApprovalStatus::TechnicalApproved) {
            prop_assert!(a.is_overdue(w.now));
            for t in [ApprovalType::Technical, ApprovalType::Business] {
                let input = SignIn { approval_type: t, decision: Decision::Approved, comments: None };
                let all = ROLES.to_vec();
                prop_assert!(approval::sign(&a, PEOPLE[who], &all, &input, "api", w.now).is_err());
            }
            w.a = a;
            step(&mut w, &Op::Sweep, &policy)?;
            prop_assert_eq!(w.a.status, ApprovalStatus::Expired);
            check_legal(&w, &policy)?;
        }
    }

    /// A rejected or expired approval is approved only by an override request and a second,
    /// different person's confirmation, and nothing one person does alone approves it.
    #[test]
    fn a_closed_approval_needs_two_people_to_reopen(s in scenario(), who in 0..PEOPLE.len(), mask in 0u8..32) {
        let policy = Policy::default();
        let w = run(&s)?;
        if matches!(w.a.status, ApprovalStatus::Rejected | ApprovalStatus::Expired) {
            let held = roles(mask);
            // Whatever one person does, twice, it is not approved.
            let mut a = w.a.clone();
            for _ in 0..2 {
                if let Ok((next, _)) = approval::emergency_override(&a, PEOPLE[who], &held, Some("again"), &policy, w.now) {
                    a = next;
                }
                for t in [ApprovalType::Technical, ApprovalType::Business] {
                    let input = SignIn { approval_type: t, decision: Decision::Approved, comments: None };
                    prop_assert!(approval::sign(&a, PEOPLE[who], &held, &input, "api", w.now).is_err());
                }
            }
            prop_assert_ne!(a.status, ApprovalStatus::Approved);
        }
    }
}
