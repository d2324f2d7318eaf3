//! The bridge's Twilio REST client against the fake Twilio REST API: auth, both error shapes,
//! 21220 on hang-up, bounded retries of transient failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use callbridge::config::Secret;
use callbridge::sim::twilio_rest::FakeTwilioRest;
use callbridge::twilio::rest::TwilioRest;

const AC: &str = "AC0123456789abcdef0123456789abcdef";
const CA: &str = "CAfedcba9876543210fedcba9876543210";

#[tokio::test]
async fn hang_up_updates_the_call_and_ends_its_stream() {
    let rest = FakeTwilioRest::new(AC, "token").spawn().await.unwrap();
    let ended = Arc::new(AtomicUsize::new(0));
    let e = ended.clone();
    rest.register_call(
        CA,
        Arc::new(move |u| {
            assert_eq!(u.field("Status"), Some("completed"));
            e.fetch_add(1, Ordering::SeqCst);
        }),
    );
    let client = TwilioRest::new(&rest.base_url(), AC, AC, Secret::new("token"));
    client.hang_up(CA).await.unwrap();
    assert_eq!(
        ended.load(Ordering::SeqCst),
        1,
        "the stream was told to stop"
    );
    assert_eq!(rest.call_status(CA), Some("completed"));
    // Hanging up a call that already ended (21220) counts as success.
    client.hang_up(CA).await.unwrap();
    let reqs = rest.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].code, Some(21220));
    assert_eq!(ended.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn errors_are_parsed_and_not_retried_when_permanent() {
    let rest = FakeTwilioRest::new(AC, "token").spawn().await.unwrap();
    let bad = TwilioRest::new(&rest.base_url(), AC, AC, Secret::new("wrong"));
    let err = bad.hang_up(CA).await.unwrap_err();
    assert_eq!(err.code(), Some(20003));
    assert!(err.to_string().contains("401"), "{err}");
    let good = TwilioRest::new(&rest.base_url(), AC, AC, Secret::new("token"));
    let err = good
        .hang_up("CA00000000000000000000000000000000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(20404));
    let long = format!("<Response><Say>{}</Say></Response>", "x".repeat(4000));
    rest.register_call(CA, Arc::new(|_| {}));
    let err = good.update_call(CA, &[("Twiml", &long)]).await.unwrap_err();
    assert_eq!(err.code(), Some(32018));
    assert_eq!(rest.requests().len(), 3, "4xx answers are not retried");
}

#[tokio::test]
async fn transient_failures_are_retried_with_a_bound() {
    let rest = FakeTwilioRest::new(AC, "token").spawn().await.unwrap();
    rest.register_call(CA, Arc::new(|_| {}));
    let client = TwilioRest::new(&rest.base_url(), AC, AC, Secret::new("token"))
        .with_retries(3, Duration::from_millis(10));
    rest.fail_next(2, 503);
    let call = client
        .update_call(CA, &[("Twiml", "<Response><Hangup/></Response>")])
        .await
        .unwrap();
    assert_eq!(call["sid"], CA);
    assert_eq!(rest.requests().len(), 3, "two 503s then success");
    rest.fail_next(10, 429);
    let err = client.hang_up(CA).await.unwrap_err();
    assert!(err.to_string().contains("429"));
    assert_eq!(
        rest.requests().len(),
        3 + 4,
        "1 try + 3 retries, then give up"
    );
}

#[tokio::test]
async fn regional_base_url_and_transport_errors() {
    // Nothing listens on this port: a transport error, retried then reported.
    let client = TwilioRest::new("http://127.0.0.1:9", AC, AC, Secret::new("token"))
        .with_retries(1, Duration::from_millis(10));
    let err = client.hang_up(CA).await.unwrap_err();
    assert!(
        err.to_string().starts_with("request to twilio failed"),
        "{err}"
    );
    assert!(!err.to_string().contains("token"));
}
