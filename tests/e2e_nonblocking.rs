//! End-to-end on Gemini 3.8's documented semantics, through the real server with the
//! simulator following the 3.8 profile: a NON_BLOCKING webhook tool's result is spoken once
//! (`WHEN_IDLE`), and a reply cut by a model fault (close 1011 mid-reply) is finished on the
//! resumed session with no silence over a second at the caller. Hang-up, barge-in and tool
//! scenarios on 3.8 and 2.5 are in `e2e_call.rs`, `e2e_control.rs` and `e2e_session.rs`.

mod common;

use std::time::Duration;

use callbridge::config::{Secret, ToolScheduling, WebhookToolConfig};
use callbridge::sim::caller::{CallReport, Script, TimelineEvent};
use callbridge::sim::gemini::{FaultAction, Reply, Scenario, ToolCall, Turn, TurnFault};
use callbridge::sim::operator::FakeOperator;
use common::*;
use serde_json::json;

const TOOLS_SECRET: &str = "operator-shared-secret";

fn agent_turns(report: &CallReport) -> Vec<(u64, u64, u64)> {
    // (start ms, end ms, played ms) per agent turn as the caller heard it.
    let mut starts = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for e in &report.timeline {
        match e.event {
            TimelineEvent::AgentAudioStart { turn } => {
                starts.insert(turn, e.at_ms);
            }
            TimelineEvent::AgentAudioEnd {
                turn, played_ms, ..
            } => out.push((starts.get(&turn).copied().unwrap_or(0), e.at_ms, played_ms)),
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_blocking_webhook_result_is_spoken_once_after_the_reply() {
    let op = FakeOperator::builder()
        .secret(TOOLS_SECRET)
        .reply(
            "lookup_order",
            json!({"status": "shipped", "eta": "Monday"}),
        )
        .spawn()
        .await
        .unwrap();
    let mut ask = Turn::reply(Reply::greeting());
    ask.tool_calls = vec![ToolCall {
        name: "lookup_order".into(),
        args: json!({"order_id": "A123"}),
    }];
    ask.tool_call_at_ms = Some(200);
    ask.after_tool = Some(Reply::long());
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![ask, Turn::reply(Reply::greeting())],
        ..Scenario::default()
    };
    let url = op.url("lookup_order");
    let h = harness(
        |s| s.scenario(scenario),
        move |c| {
            c.tools.secret = Secret::new(TOOLS_SECRET);
            c.tools.webhooks = vec![WebhookToolConfig {
                name: "lookup_order".into(),
                description: "Look up an order".into(),
                parameters: None,
                url,
                // The fake operator serves plain http on 127.0.0.1.
                allow_insecure: true,
                timeout_ms: 3_000,
                scheduling: ToolScheduling::WhenIdle,
            }];
        },
    )
    .await;
    let report = h
        .caller()
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .wait_for_agent(600, 20_000)
                .silence(12_000)
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .unwrap();
    let rec = h.sim.record();
    let conn = &rec.connections[0];
    assert_eq!(conn.tool_responses.len(), 1);
    assert_eq!(conn.tool_responses[0]["scheduling"], "WHEN_IDLE");
    let decl = conn.setup.as_ref().unwrap()["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "lookup_order")
        .cloned()
        .unwrap();
    assert_eq!(decl["behavior"], "NON_BLOCKING");
    // Greeting, the reply that kept going while the tool ran, then the result — once.
    let long_ms = callbridge::sim::gemini::Clip::long().duration_ms();
    let turns = agent_turns(&report);
    let result_turns = turns
        .iter()
        .filter(|(_, _, played)| *played + 200 >= long_ms)
        .count();
    assert_eq!(result_turns, 1, "result spoken once: {turns:?}");
    let heard = ulaw_to_pcm(&report.heard);
    let (score, _) = find_in(&heard, &pcm("model_long.ref8k.wav"));
    assert!(score > 0.9, "the result turn was heard: {score:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_cut_by_a_fault_is_finished_without_a_second_of_silence() {
    let mut answer = Turn::reply(Reply::long());
    answer.fault = Some(TurnFault {
        after_ms: 400,
        action: FaultAction::Close {
            code: 1011,
            reason: "Internal error encountered.".into(),
        },
    });
    let scenario = Scenario {
        greeting: Some(Reply::greeting()),
        turns: vec![answer, Turn::reply(Reply::greeting())],
        ..Scenario::default()
    };
    let mut h = harness(|s| s.scenario(scenario), |_| {}).await;
    let report = h
        .caller()
        .script(
            Script::new()
                .wait_for_agent(600, 15_000)
                .say_ulaw("hello", caller_clip("caller_hello"))
                .wait_for_agent(600, 20_000)
                .silence(3_000)
                .hang_up(),
        )
        .spawn()
        .join()
        .await
        .unwrap();
    let notes = h.notes_until_end(Duration::from_secs(5)).await;
    let kinds = event_kinds(&notes);
    assert!(
        kinds.iter().any(|k| k == "reconnected fault resumed"),
        "{kinds:?}"
    );
    // The resumed session was asked to finish the reply.
    let rec = h.sim.record();
    assert!(rec.connections.len() >= 2);
    let asked = rec.connections[1]
        .frames
        .iter()
        .any(|f| f.raw.contains("clientContent") && f.raw.contains("line dropped"));
    assert!(asked, "continuation asked for");
    // From the caller's first word of the cut reply to the end of its continuation, no gap
    // between agent audio longer than a second.
    let hello_end = report
        .timeline
        .iter()
        .find_map(|e| match &e.event {
            TimelineEvent::UtteranceEnd { label } if label == "hello" => Some(e.at_ms),
            _ => None,
        })
        .unwrap();
    let turns: Vec<_> = agent_turns(&report)
        .into_iter()
        .filter(|(start, _, _)| *start > hello_end)
        .collect();
    // The caller's player may hear the cut reply and its continuation as one turn (no gap
    // at all) or as several.
    let played: u64 = turns.iter().map(|t| t.2).sum();
    let long_ms = callbridge::sim::gemini::Clip::long().duration_ms();
    assert!(played > long_ms, "cut part + continuation: {turns:?}");
    let gap = turns
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].1))
        .max();
    assert!(gap.unwrap_or(0) <= 1_000, "silence {gap:?} ms: {turns:?}");
    let heard = ulaw_to_pcm(&report.heard);
    let (score, _) = find_in(&heard, &pcm("model_long.ref8k.wav"));
    assert!(score > 0.9, "the answer was heard in full: {score:.3}");
}
