//! Operators steering live calls through the real server: hang-up and transfer sent to a
//! call's command inbox (what the operator API and the dashboard buttons use), with the
//! Gemini simulator, the fake Twilio REST API and a simulated Twilio caller on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use callbridge::call::event::OperatorCommand;
use callbridge::config::TransferDestination;
use callbridge::ops::journal::CallRecord;
use callbridge::ops::CommandError;
use callbridge::sim::caller::{CallEnding, Script, TimelineEvent};
use callbridge::sim::gemini::{Reply, Scenario};
use common::*;

const BILLING: &str = "+14155550100";

fn billing(c: &mut callbridge::config::Config) {
    let mut d = BTreeMap::new();
    d.insert(
        "billing".to_string(),
        TransferDestination {
            target: BILLING.into(),
            description: "The billing team.".into(),
            whisper: String::new(),
        },
    );
    c.transfer.destinations = d;
}

/// Waits until the call with this CallSid is live in the journal (its stream started).
async fn live_id(h: &Harness, call_sid: &str) -> String {
    for _ in 0..200 {
        if let Some(r) = h
            .state
            .journal
            .live_calls()
            .into_iter()
            .find(|r| r.call_sid.as_deref() == Some(call_sid) && r.sessions > 0)
        {
            return r.id;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("call {call_sid} never went live");
}

async fn ended_record(h: &Harness, id: &str) -> CallRecord {
    for _ in 0..200 {
        if let Some(r) = h.state.journal.recent_call(id) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no record for {id}");
}

fn long_call() -> Script {
    Script::new().wait_for_agent(600, 15_000).silence(30_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_hang_up_ends_a_live_call_through_the_provider() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        ..Scenario::default()
    };
    let h = harness(|s| s.scenario(scenario), |_| {}).await;
    let call_sid = format!("CA{:032x}", 0x701);
    let caller = h.caller().call_sid(&call_sid).script(long_call()).spawn();
    h.rest.register_caller(&call_sid, &caller);
    let id = live_id(&h, &call_sid).await;
    assert_eq!(
        h.state
            .commands
            .send(
                "0000000000000000",
                OperatorCommand::HangUp,
                Duration::from_secs(2)
            )
            .await,
        Err(CommandError::NotFound)
    );
    h.state
        .commands
        .send(&id, OperatorCommand::HangUp, Duration::from_secs(5))
        .await
        .expect("hang-up accepted");
    let report = caller.join().await.expect("call runs");
    assert_eq!(report.ended_by, Some(CallEnding::CompletedByRest));
    let r = ended_record(&h, &id).await;
    assert_eq!(r.end_reason.as_deref(), Some("operator_hung_up"));
    assert_eq!(r.source, "phone");
    assert!(r
        .from
        .as_deref()
        .is_some_and(|f| f.ends_with("23") && !f.contains("5550123")));
    let reqs = h.rest.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert!(
        reqs[0]
            .fields
            .iter()
            .any(|(k, v)| k == "Status" && v == "completed"),
        "{reqs:?}"
    );
    // The call task drops its inbox as it finishes, which can be a moment after the record
    // is written on a loaded machine.
    for _ in 0..100 {
        if !h.state.commands.contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !h.state.commands.contains(&id),
        "the inbox goes with the call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_transfer_dials_at_once_and_bad_destinations_are_refused() {
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        ..Scenario::default()
    };
    let h = harness(|s| s.scenario(scenario), billing).await;
    let call_sid = format!("CA{:032x}", 0x702);
    let caller = h.caller().call_sid(&call_sid).script(long_call()).spawn();
    h.rest.register_caller(&call_sid, &caller);
    let id = live_id(&h, &call_sid).await;
    let refused = h
        .state
        .commands
        .send(
            &id,
            OperatorCommand::Transfer {
                id: String::new(),
                destination: "the moon".into(),
            },
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(refused, Err(CommandError::Failed(ref e)) if e.contains("E.164")),
        "{refused:?}"
    );
    h.state
        .commands
        .send(
            &id,
            OperatorCommand::Transfer {
                id: String::new(),
                destination: "billing".into(),
            },
            Duration::from_secs(10),
        )
        .await
        .expect("transfer done");
    let report = caller.join().await.expect("call runs");
    assert_eq!(report.ended_by, Some(CallEnding::Transferred));
    assert!(report
        .timeline
        .iter()
        .any(|e| matches!(&e.event, TimelineEvent::Dialed { target, .. } if target == BILLING)));
    let r = ended_record(&h, &id).await;
    assert_eq!(r.end_reason.as_deref(), Some("transferred"));
    let ops: Vec<_> = r.timeline.iter().filter(|t| t.kind == "operator").collect();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(ops[0].detail["ok"], false);
    assert_eq!(ops[1].detail["ok"], true);
}
