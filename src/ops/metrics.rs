//! Prometheus metrics for `GET /metrics` (OpenMetrics text, via `prometheus-client`).
//!
//! [`Metrics`] is a [`CallObserver`]: it counts what the calls report (calls by end reason,
//! model sessions and handovers, barge-ins, tool calls, tokens and their estimated cost,
//! response time, call duration). The bridge's own latency histograms ([`BridgeStats`]) are
//! read at scrape time and re-bucketed into fixed Prometheus buckets by [`Metrics::render`].
//!
//! Labels are bounded and anonymous: end reasons, sources and handover reasons are the
//! bridge's own names; tool names are kept only for tools declared in the configuration (any
//! other name the model makes up becomes `other`); modalities are a fixed set. No phone
//! number, call id or transcript ever becomes a label.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::journal::TokenUsage;
use super::{CallId, CallObserver, CallSource};
use crate::call::event::CallEvent;
use crate::call::settings::CallSettings;
use crate::config::{Config, PricingConfig};
use crate::gemini::preflight::{ModelHealth, PreflightOutcome};
use crate::stats::{BridgeStats, HistogramSnapshot};

/// `Content-Type` of what [`Metrics::render`] produces (the OpenMetrics text format, which
/// Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this (and `_`).
const PREFIX: &str = "callbridge";

/// Bounds (µs) of the bridge-added latency and runtime lag buckets: 50 µs … 1 s.
const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];
/// Response time buckets, seconds.
const RESPONSE_BUCKETS: [f64; 13] = [
    0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0,
];
/// Model setup (connect → `setupComplete`) buckets, seconds.
const SETUP_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];
/// Call duration buckets, seconds.
const DURATION_BUCKETS: [f64; 11] = [
    5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
];
/// Modalities kept as label values (upper case); anything else is `other`.
const MODALITIES: [&str; 7] = [
    "TEXT",
    "AUDIO",
    "IMAGE",
    "VIDEO",
    "DOCUMENT",
    "THOUGHTS",
    "UNSPECIFIED",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandoverLabels {
    reason: &'static str,
    resumed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolLabels {
    tool: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    direction: &'static str,
    modality: &'static str,
}

/// What is kept per live call: enough to count it once and time it.
struct CallMeta {
    opened: Instant,
    source: CallSource,
    /// Counted in `calls_opened` (on its first event: a stream that turns out to continue a
    /// parked call is discarded before it has any, and is not a new call).
    counted: bool,
}

/// The bridge's Prometheus metrics. See the module docs.
pub struct Metrics {
    registry: Registry,
    calls: DashMap<CallId, CallMeta>,
    declared_tools: HashSet<String>,
    pricing: PricingConfig,
    live: Gauge,
    ended: Family<ReasonLabels, Counter>,
    opened: Family<SourceLabels, Counter>,
    duration: Histogram,
    sessions: Counter,
    handovers: Family<HandoverLabels, Counter>,
    go_aways: Counter,
    odd_turns: Family<ReasonLabels, Counter>,
    setup: Histogram,
    barge_ins: Counter,
    tool_calls: Family<ToolLabels, Counter>,
    operator: Family<ActionLabels, Counter>,
    response: Histogram,
    tokens: Family<TokenLabels, Counter>,
    cost: Counter<f64, AtomicU64>,
    preflight_status: Family<StatusLabels, Gauge>,
    preflight_checks: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("live_calls", &self.live.get())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for this configuration (the declared tools bound the `tool` label; the prices
    /// give the estimated cost).
    pub fn new(config: &Config) -> Metrics {
        let declared_tools = CallSettings::from_config(config)
            .setup
            .tools
            .iter()
            .map(|t| t.name.clone())
            .collect();
        let mut registry = Registry::with_prefix(PREFIX);
        let live = Gauge::default();
        registry.register(
            "live_calls",
            "Calls in progress (a call parked between streams after send_dtmf counts)",
            live.clone(),
        );
        let ended = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "calls",
            "Calls ended, by end reason (internal_error: the call task failed)",
            ended.clone(),
        );
        let opened = Family::<SourceLabels, Counter>::default();
        for source in [CallSource::Phone, CallSource::Browser] {
            let _ = opened.get_or_create(&SourceLabels {
                source: source.as_str(),
            });
        }
        registry.register(
            "calls_opened",
            "Calls opened, by source (a continued stream after send_dtmf is not a new call)",
            opened.clone(),
        );
        let duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "call_duration_seconds",
            "Call duration, from the media stream's acceptance to the end of the call",
            duration.clone(),
        );
        let sessions = Counter::default();
        registry.register(
            "model_sessions",
            "Model sessions opened (each call's first, plus one per handover)",
            sessions.clone(),
        );
        let handovers = Family::<HandoverLabels, Counter>::default();
        registry.register(
            "model_handovers",
            "Conversations moved to a new model connection, by reason (go_away, fault) and \
             whether the session was resumed",
            handovers.clone(),
        );
        let go_aways = Counter::default();
        registry.register(
            "model_go_away",
            "goAway messages received from the model",
            go_aways.clone(),
        );
        let odd_turns = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "model_odd_turn_ends",
            "Model turns that ended without a usable reply (refused, malformed, or no audio \
             after the caller spoke); the caller heard the filler and the model was asked again",
            odd_turns.clone(),
        );
        let setup = Histogram::new(SETUP_BUCKETS);
        registry.register(
            "model_setup_seconds",
            "A call's first model session: connect request to setupComplete",
            setup.clone(),
        );
        let barge_ins = Counter::default();
        registry.register(
            "barge_ins",
            "Times a caller interrupted the agent",
            barge_ins.clone(),
        );
        let tool_calls = Family::<ToolLabels, Counter>::default();
        registry.register(
            "tool_calls",
            "Tool calls answered, by tool (undeclared names: other) and outcome (ok, error)",
            tool_calls.clone(),
        );
        let operator = Family::<ActionLabels, Counter>::default();
        registry.register(
            "operator_actions",
            "Operator requests to live calls that finished, by action and outcome",
            operator.clone(),
        );
        let response = Histogram::new(RESPONSE_BUCKETS);
        registry.register(
            "response_time_seconds",
            "Caller's end of speech to the first agent audio sent, as seen by the bridge",
            response.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "model_tokens",
            "Model tokens by direction (prompt, response) and modality, from usageMetadata",
            tokens.clone(),
        );
        let cost = Counter::<f64, AtomicU64>::default();
        registry.register(
            "model_cost_usd",
            "Estimated model cost in USD (tokens times the configured [pricing])",
            cost.clone(),
        );
        let preflight_status = Family::<StatusLabels, Gauge>::default();
        for health in ModelHealth::ALL {
            let v = i64::from(health == ModelHealth::Unchecked);
            preflight_status
                .get_or_create(&StatusLabels {
                    status: health.as_str(),
                })
                .set(v);
        }
        registry.register(
            "model_preflight_status",
            "The model as the latest preflight check left it: 1 for the current status (ok, \
             refused, unchecked: not checked yet, preflight off, or no verdict)",
            preflight_status.clone(),
        );
        let preflight_checks = Family::<ResultLabels, Counter>::default();
        for result in ["accepted", "refused", "unreachable"] {
            let _ = preflight_checks.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "model_preflight_checks",
            "Preflight checks (one model session opened like a call's), by result (accepted, \
             refused, unreachable)",
            preflight_checks.clone(),
        );
        Metrics {
            registry,
            calls: DashMap::new(),
            declared_tools,
            pricing: config.pricing.clone(),
            live,
            ended,
            opened,
            duration,
            sessions,
            handovers,
            go_aways,
            odd_turns,
            setup,
            barge_ins,
            tool_calls,
            operator,
            response,
            tokens,
            cost,
            preflight_status,
            preflight_checks,
        }
    }

    /// A preflight check finished: counts it and makes its status the current one.
    pub fn preflight(&self, outcome: &PreflightOutcome) {
        self.preflight_checks
            .get_or_create(&ResultLabels {
                result: outcome.result_str(),
            })
            .inc();
        let current = outcome.health();
        for health in ModelHealth::ALL {
            self.preflight_status
                .get_or_create(&StatusLabels {
                    status: health.as_str(),
                })
                .set(i64::from(health == current));
        }
    }

    /// The metrics in the OpenMetrics text format ([`CONTENT_TYPE`]), with the bridge's
    /// latency histograms and frame counters read from `stats` now.
    pub fn render(&self, stats: &BridgeStats) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut scrape = Registry::with_prefix(PREFIX);
        scrape.register_collector(Box::new(StatsCollector::read(stats)));
        let written = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &scrape))
            .and_then(|()| encode_eof(&mut out));
        if written.is_err() {
            tracing::error!("metrics could not be encoded");
        }
        out
    }

    /// The `tool` label for a tool name: the name when the configuration declares it, else
    /// `other` (the model may invent names; they must not grow the label set).
    fn tool_label(&self, name: &str) -> String {
        if self.declared_tools.contains(name) {
            name.to_string()
        } else {
            "other".to_string()
        }
    }

    /// Counts a call as opened the first time it reports anything.
    fn count_opened(&self, id: &CallId) {
        if let Some(mut meta) = self.calls.get_mut(id) {
            if !meta.counted {
                meta.counted = true;
                self.opened
                    .get_or_create(&SourceLabels {
                        source: meta.source.as_str(),
                    })
                    .inc();
            }
        }
    }

    /// A call ended (or failed): counted once, by reason; no longer live.
    fn end(&self, id: &CallId, reason: &'static str) {
        let Some((_, meta)) = self.calls.remove(id) else {
            return;
        };
        if !meta.counted {
            self.opened
                .get_or_create(&SourceLabels {
                    source: meta.source.as_str(),
                })
                .inc();
        }
        self.live.dec();
        self.ended.get_or_create(&ReasonLabels { reason }).inc();
        self.duration.observe(meta.opened.elapsed().as_secs_f64());
    }

    fn usage(&self, u: &crate::gemini::wire::UsageMetadata) {
        // Same split as the call record: details per modality, the rest as UNSPECIFIED.
        let mut cost = 0.0;
        for (direction, modality, n) in TokenUsage::default().add(u) {
            if n == 0 {
                continue;
            }
            self.tokens
                .get_or_create(&TokenLabels {
                    direction,
                    modality: modality_label(&modality),
                })
                .inc_by(n);
            cost += n as f64 * self.pricing.per_token(direction, &modality);
        }
        if cost > 0.0 {
            self.cost.inc_by(cost);
        }
    }
}

/// A bounded modality label (the model's names are upper case; `TokenUsage::add` makes them so).
fn modality_label(m: &str) -> &'static str {
    MODALITIES
        .iter()
        .find(|k| k.eq_ignore_ascii_case(m))
        .copied()
        .unwrap_or("other")
}

fn ms_to_secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl CallObserver for Metrics {
    fn call_opened(&self, id: &CallId, _conn: u64, source: CallSource) {
        let fresh = self
            .calls
            .insert(
                id.clone(),
                CallMeta {
                    opened: Instant::now(),
                    source,
                    counted: false,
                },
            )
            .is_none();
        if fresh {
            self.live.inc();
        }
    }

    fn event(&self, id: &CallId, _at: SystemTime, event: &CallEvent) {
        if let CallEvent::Ended(why) = event {
            return self.end(id, why.as_str());
        }
        self.count_opened(id);
        match event {
            CallEvent::ModelReady { setup_ms } => {
                self.sessions.inc();
                self.setup.observe(ms_to_secs(*setup_ms));
            }
            CallEvent::Reconnected {
                reason, resumed, ..
            } => {
                self.sessions.inc();
                self.handovers
                    .get_or_create(&HandoverLabels {
                        reason,
                        resumed: if *resumed { "true" } else { "false" },
                    })
                    .inc();
            }
            CallEvent::GoAway { .. } => {
                self.go_aways.inc();
            }
            CallEvent::OddTurnEnd { reason } => {
                self.odd_turns.get_or_create(&ReasonLabels { reason }).inc();
            }
            CallEvent::Interrupted { .. } => {
                self.barge_ins.inc();
            }
            CallEvent::ToolResult { name, ok, .. } => {
                self.tool_calls
                    .get_or_create(&ToolLabels {
                        tool: self.tool_label(name),
                        outcome: if *ok { "ok" } else { "error" },
                    })
                    .inc();
            }
            CallEvent::Operator { action, result, .. } => {
                self.operator
                    .get_or_create(&ActionLabels {
                        action,
                        outcome: if result.is_ok() { "ok" } else { "error" },
                    })
                    .inc();
            }
            CallEvent::AgentSpeaking {
                response_ms: Some(ms),
                ..
            } => self.response.observe(ms_to_secs(*ms)),
            CallEvent::Usage(u) => self.usage(u),
            _ => {}
        }
    }

    fn call_discarded(&self, id: &CallId) {
        if self.calls.remove(id).is_some() {
            self.live.dec();
        }
    }

    fn call_failed(&self, id: &CallId) {
        self.end(id, "internal_error");
    }
}

/// The bridge's latency histograms and frame counters, read once per scrape.
#[derive(Debug)]
struct StatsCollector {
    uplink: HistogramSnapshot,
    downlink: HistogramSnapshot,
    runtime_lag: HistogramSnapshot,
    frames_to_model: u64,
    frames_to_caller: u64,
}

impl StatsCollector {
    fn read(stats: &BridgeStats) -> StatsCollector {
        StatsCollector {
            uplink: stats.uplink.snapshot(),
            downlink: stats.downlink.snapshot(),
            runtime_lag: stats.runtime_lag.snapshot(),
            frames_to_model: stats.frames_to_model.load(Ordering::Relaxed),
            frames_to_caller: stats.frames_to_caller.load(Ordering::Relaxed),
        }
    }
}

/// Encodes a log-linear snapshot as a histogram with [`LATENCY_BOUNDS_US`] buckets (seconds).
/// `_count` is the `+Inf` bucket (the sum of the fine buckets), `_sum` the recorded sum.
fn encode_latency(mut m: MetricEncoder<'_>, s: &HistogramSnapshot) -> std::fmt::Result {
    let cumulative = s.cumulative_at(&LATENCY_BOUNDS_US);
    let total = cumulative.last().copied().unwrap_or(0);
    let mut buckets = Vec::with_capacity(cumulative.len());
    let mut previous = 0;
    for (i, &c) in cumulative.iter().enumerate() {
        let bound = LATENCY_BOUNDS_US
            .get(i)
            .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
        buckets.push((bound, c - previous));
        previous = c;
    }
    m.encode_histogram::<NoLabelSet>(s.sum_us as f64 / 1e6, total, &buckets, None)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        {
            let mut m = encoder.encode_descriptor(
                "bridge_latency_seconds",
                "Time audio spends inside the bridge per 20 ms frame, by leg (uplink: caller \
                 to model, downlink: model to caller); buckets count values at or below their \
                 bound to within 12.5 %.",
                None,
                MetricType::Histogram,
            )?;
            for (leg, snapshot) in [("uplink", &self.uplink), ("downlink", &self.downlink)] {
                encode_latency(m.encode_family(&[("leg", leg)])?, snapshot)?;
            }
        }
        encode_latency(
            encoder.encode_descriptor(
                "runtime_lag_seconds",
                "How late the async runtime woke a 10 ms timer.",
                None,
                MetricType::Histogram,
            )?,
            &self.runtime_lag,
        )?;
        for (name, help, value) in [
            (
                "frames_to_model",
                "Audio messages written to model sockets.",
                self.frames_to_model,
            ),
            (
                "frames_to_caller",
                "20 ms media frames written to callers.",
                self.frames_to_caller,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::event::CallEnd;
    use crate::config::WebhookToolConfig;
    use crate::gemini::wire::UsageMetadata;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// One sample line: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// A small parser of the text format: every sample line, checking the syntax as it goes.
    fn parse(text: &str) -> Vec<Sample> {
        assert!(text.ends_with("# EOF\n"), "no EOF marker");
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name and value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("label=value");
                            let v = v
                                .strip_prefix('"')
                                .and_then(|v| v.strip_suffix('"'))
                                .expect("quoted value");
                            (k.to_string(), v.to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            out.push((name, labels, value));
        }
        out
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.2)
    }

    /// Buckets of one histogram series (`le` → cumulative count), plus `_count` and `_sum`.
    fn histogram(
        samples: &[Sample],
        name: &str,
        labels: &[(&str, &str)],
    ) -> (Vec<(f64, f64)>, f64, f64) {
        let bucket_name = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == &bucket_name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, l, v)| {
                let le = match l["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    s => s.parse().expect("le"),
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = value(samples, &format!("{name}_count"), labels).expect("_count");
        let sum = value(samples, &format!("{name}_sum"), labels).expect("_sum");
        (buckets, count, sum)
    }

    /// Cumulative and ending in +Inf = _count.
    fn assert_consistent(buckets: &[(f64, f64)], count: f64) {
        assert!(!buckets.is_empty());
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        let last = buckets.last().unwrap();
        assert_eq!(last.0, f64::INFINITY);
        assert_eq!(last.1, count);
    }

    fn config() -> Config {
        let mut c = Config::default();
        c.tools.webhooks.push(WebhookToolConfig {
            scheduling: Default::default(),
            name: "lookup_order".into(),
            description: "Look up an order.".into(),
            url: "https://ops.example.com/hook".into(),
            allow_insecure: false,
            parameters: None,
            timeout_ms: 1_000,
        });
        c
    }

    fn id(s: &str) -> CallId {
        s.into()
    }

    fn ev(m: &Metrics, call: &CallId, e: CallEvent) {
        m.event(call, SystemTime::now(), &e);
    }

    fn usage(prompt: &[(&str, u64)], prompt_total: u64, response: &[(&str, u64)]) -> CallEvent {
        let r: u64 = response.iter().map(|x| x.1).sum();
        CallEvent::Usage(UsageMetadata {
            prompt_token_count: prompt_total,
            response_token_count: r,
            total_token_count: prompt_total + r,
            prompt_details: prompt.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
            response_details: response.iter().map(|(m, n)| (m.to_string(), *n)).collect(),
            thoughts_token_count: 0,
        })
    }

    #[test]
    fn counters_follow_the_calls_events() {
        let m = Metrics::new(&config());
        let stats = BridgeStats::default();
        let a = id("00000000000000a1");
        let b = id("00000000000000b2");
        m.call_opened(&a, 1, CallSource::Phone);
        m.call_opened(&b, 2, CallSource::Browser);
        ev(&m, &a, CallEvent::ModelReady { setup_ms: 300 });
        ev(&m, &a, CallEvent::GoAway { time_left_ms: None });
        ev(
            &m,
            &a,
            CallEvent::Reconnected {
                reason: "go_away",
                resumed: true,
                gap_ms: 40,
            },
        );
        ev(
            &m,
            &a,
            CallEvent::Reconnected {
                reason: "fault",
                resumed: false,
                gap_ms: 900,
            },
        );
        for _ in 0..2 {
            ev(
                &m,
                &a,
                CallEvent::Interrupted {
                    turn: 1,
                    heard_ms: 0,
                    sent_ms: 0,
                },
            );
        }
        for (name, ok) in [
            ("end_call", true),
            ("lookup_order", false),
            ("lookup_order", true),
            ("made_up_tool_+14155550123", false),
            ("transfer_call", false), // not declared: no transfer destinations configured
        ] {
            ev(
                &m,
                &a,
                CallEvent::ToolResult {
                    id: "fc-1".into(),
                    name: name.into(),
                    ok,
                },
            );
        }
        ev(
            &m,
            &b,
            CallEvent::Operator {
                id: "operator-1".into(),
                action: "transfer",
                destination: "+14155550100".into(),
                result: Err("no".into()),
            },
        );
        ev(&m, &b, CallEvent::ModelReady { setup_ms: 1_200 });
        let text = m.render(&stats);
        let s = parse(&text);
        assert_eq!(value(&s, "callbridge_live_calls", &[]), Some(2.0));
        assert!(
            text.contains("\ncallbridge_model_sessions_total 4\n"),
            "{text}"
        );
        assert!(
            text.contains("\ncallbridge_model_go_away_total 1\n"),
            "{text}"
        );
        assert!(text.contains("\ncallbridge_barge_ins_total 2\n"), "{text}");
        assert!(
            text.contains(
                "\ncallbridge_model_handovers_total{reason=\"go_away\",resumed=\"true\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "\ncallbridge_model_handovers_total{reason=\"fault\",resumed=\"false\"} 1\n"
        ));
        for (tool, outcome, n) in [
            ("end_call", "ok", 1.0),
            ("lookup_order", "error", 1.0),
            ("lookup_order", "ok", 1.0),
            ("other", "error", 2.0),
        ] {
            assert_eq!(
                value(
                    &s,
                    "callbridge_tool_calls_total",
                    &[("tool", tool), ("outcome", outcome)]
                ),
                Some(n),
                "{tool} {outcome}: {text}"
            );
        }
        assert!(!text.contains("made_up"), "{text}");
        assert!(!text.contains("+1415"), "{text}");
        assert_eq!(
            value(
                &s,
                "callbridge_operator_actions_total",
                &[("action", "transfer"), ("outcome", "error")]
            ),
            Some(1.0)
        );
        // Opened when they first report; nothing ended yet.
        assert_eq!(
            value(&s, "callbridge_calls_opened_total", &[("source", "phone")]),
            Some(1.0)
        );
        assert_eq!(
            value(
                &s,
                "callbridge_calls_opened_total",
                &[("source", "browser")]
            ),
            Some(1.0)
        );
        assert!(!s.iter().any(|x| x.0 == "callbridge_calls_total"), "{text}");
        let (buckets, count, sum) = histogram(&s, "callbridge_model_setup_seconds", &[]);
        assert_consistent(&buckets, count);
        assert_eq!(count, 2.0);
        assert!((sum - 1.5).abs() < 1e-9, "{sum}");
        assert_eq!(buckets.iter().find(|b| b.0 == 0.5).unwrap().1, 1.0);
        assert_eq!(buckets.iter().find(|b| b.0 == 1.5).unwrap().1, 2.0);

        ev(&m, &a, CallEvent::Ended(CallEnd::AgentHungUp));
        ev(&m, &a, CallEvent::Ended(CallEnd::AgentHungUp)); // counted once
        m.call_failed(&b);
        let c = id("00000000000000c3");
        m.call_opened(&c, 3, CallSource::Phone);
        ev(
            &m,
            &c,
            CallEvent::Ended(CallEnd::ModelUnavailable("x".into())),
        );
        let s = parse(&m.render(&stats));
        assert_eq!(value(&s, "callbridge_live_calls", &[]), Some(0.0));
        for (reason, n) in [
            ("agent_hung_up", 1.0),
            ("internal_error", 1.0),
            ("model_unavailable", 1.0),
        ] {
            assert_eq!(
                value(&s, "callbridge_calls_total", &[("reason", reason)]),
                Some(n),
                "{reason}"
            );
        }
        assert_eq!(
            value(&s, "callbridge_calls_opened_total", &[("source", "phone")]),
            Some(2.0)
        );
        let (buckets, count, _) = histogram(&s, "callbridge_call_duration_seconds", &[]);
        assert_consistent(&buckets, count);
        assert_eq!(count, 3.0);
        assert_eq!(buckets[0], (5.0, 3.0));
    }

    #[test]
    fn a_continued_stream_is_not_a_new_call_and_a_parked_call_stays_live() {
        let m = Metrics::new(&config());
        let stats = BridgeStats::default();
        let call = id("0000000000000001");
        let continued = id("0000000000000002");
        m.call_opened(&call, 1, CallSource::Phone);
        ev(
            &m,
            &call,
            CallEvent::Started {
                call_sid: "CA1".into(),
                stream_sid: "MZ1".into(),
                from: Some("+14155550123".into()),
                to: None,
            },
        );
        // The first stream ends (parked), a second stream opens and is discarded: it carries
        // on under the first call's id.
        m.call_opened(&continued, 2, CallSource::Phone);
        m.call_discarded(&continued);
        let s = parse(&m.render(&stats));
        assert_eq!(value(&s, "callbridge_live_calls", &[]), Some(1.0));
        ev(
            &m,
            &call,
            CallEvent::Continued {
                stream_sid: "MZ2".into(),
            },
        );
        ev(&m, &call, CallEvent::Ended(CallEnd::CallerHungUp));
        m.call_discarded(&continued); // again: nothing changes
        let text = m.render(&stats);
        let s = parse(&text);
        assert_eq!(value(&s, "callbridge_live_calls", &[]), Some(0.0));
        assert_eq!(
            value(&s, "callbridge_calls_opened_total", &[("source", "phone")]),
            Some(1.0)
        );
        assert!(text.contains("\ncallbridge_calls_total{reason=\"caller_hung_up\"} 1\n"));
        assert!(!text.contains("+1415") && !text.contains("CA1"), "{text}");
    }

    #[test]
    fn tokens_by_modality_and_cost_follow_the_pricing() {
        let c = config();
        let m = Metrics::new(&c);
        let call = id("0000000000000003");
        m.call_opened(&call, 1, CallSource::Phone);
        // Per turn, not cumulative: both are added. Lower-case and unknown modalities, and a
        // remainder without a split.
        ev(
            &m,
            &call,
            usage(&[("TEXT", 100), ("audio", 300)], 450, &[("AUDIO", 200)]),
        );
        ev(
            &m,
            &call,
            usage(&[("AUDIO", 50), ("SMELL", 7)], 57, &[("TEXT", 10)]),
        );
        let s = parse(&m.render(&BridgeStats::default()));
        let tokens = |d: &str, mo: &str| {
            value(
                &s,
                "callbridge_model_tokens_total",
                &[("direction", d), ("modality", mo)],
            )
        };
        assert_eq!(tokens("prompt", "TEXT"), Some(100.0));
        assert_eq!(tokens("prompt", "AUDIO"), Some(350.0));
        assert_eq!(tokens("prompt", "UNSPECIFIED"), Some(50.0));
        assert_eq!(tokens("prompt", "other"), Some(7.0));
        assert_eq!(tokens("response", "AUDIO"), Some(200.0));
        assert_eq!(tokens("response", "TEXT"), Some(10.0));
        let p = &c.pricing;
        let expected = (100.0 * p.input_text
            + 350.0 * p.input_audio
            + 57.0 * p.input_other
            + 200.0 * p.output_audio
            + 10.0 * p.output_text)
            / 1e6;
        let cost = value(&s, "callbridge_model_cost_usd_total", &[]).unwrap();
        assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
        // The same figure as the call record's estimate.
        let mut record = TokenUsage::default();
        for e in [
            usage(&[("TEXT", 100), ("audio", 300)], 450, &[("AUDIO", 200)]),
            usage(&[("AUDIO", 50), ("SMELL", 7)], 57, &[("TEXT", 10)]),
        ] {
            if let CallEvent::Usage(u) = e {
                record.add(&u);
            }
        }
        assert!((record.cost_usd(p) - cost).abs() < 1e-12);
    }

    #[test]
    fn response_time_histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::new(&config());
        let call = id("0000000000000004");
        m.call_opened(&call, 1, CallSource::Phone);
        for (turn, ms) in [(1, None), (2, Some(400)), (3, Some(900)), (4, Some(12_000))] {
            ev(
                &m,
                &call,
                CallEvent::AgentSpeaking {
                    turn,
                    response_ms: ms,
                },
            );
        }
        let text = m.render(&BridgeStats::default());
        let s = parse(&text);
        let (buckets, count, sum) = histogram(&s, "callbridge_response_time_seconds", &[]);
        assert_consistent(&buckets, count);
        assert_eq!(count, 3.0);
        assert!((sum - 13.3).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.25, 0.0));
        assert_eq!(buckets[1], (0.5, 1.0));
        assert_eq!(buckets.iter().find(|b| b.0 == 1.0).unwrap().1, 2.0);
        assert_eq!(buckets.iter().find(|b| b.0 == 10.0).unwrap().1, 2.0);
        assert!(text.contains("\ncallbridge_response_time_seconds_bucket{le=\"0.5\"} 1\n"));
    }

    #[test]
    fn bridge_latency_is_rebucketed_from_the_stats_histograms() {
        let m = Metrics::new(&config());
        let stats = BridgeStats::default();
        for us in [30u64, 40, 80, 90, 700, 3_000, 3_000, 40_000, 2_000_000] {
            stats.uplink.record(Duration::from_micros(us));
        }
        stats.downlink.record(Duration::from_micros(200));
        stats.runtime_lag.record(Duration::from_micros(1_500));
        stats.frames_to_model.fetch_add(9, Ordering::Relaxed);
        let text = m.render(&stats);
        let s = parse(&text);
        let (up, count, sum) = histogram(
            &s,
            "callbridge_bridge_latency_seconds",
            &[("leg", "uplink")],
        );
        assert_consistent(&up, count);
        assert_eq!(up.len(), LATENCY_BOUNDS_US.len() + 1);
        assert_eq!(count, 9.0);
        let exact_sum = [30u64, 40, 80, 90, 700, 3_000, 3_000, 40_000, 2_000_000]
            .iter()
            .sum::<u64>() as f64
            / 1e6;
        assert!((sum - exact_sum).abs() < 1e-9, "{sum}");
        let at = |le: f64| up.iter().find(|b| (b.0 - le).abs() < 1e-12).unwrap().1;
        assert_eq!(at(0.00005), 2.0);
        assert_eq!(at(0.0001), 4.0);
        assert_eq!(at(0.001), 5.0);
        assert_eq!(at(0.005), 7.0);
        assert_eq!(at(0.05), 8.0);
        assert_eq!(at(1.0), 8.0);
        let (down, count, _) = histogram(
            &s,
            "callbridge_bridge_latency_seconds",
            &[("leg", "downlink")],
        );
        assert_consistent(&down, count);
        assert_eq!(count, 1.0);
        let (lag, count, _) = histogram(&s, "callbridge_runtime_lag_seconds", &[]);
        assert_consistent(&lag, count);
        assert_eq!(count, 1.0);
        assert_eq!(
            value(&s, "callbridge_frames_to_model_total", &[]),
            Some(9.0)
        );
        assert_eq!(
            value(&s, "callbridge_frames_to_caller_total", &[]),
            Some(0.0)
        );
        // One TYPE line per family.
        assert_eq!(
            text.matches("# TYPE callbridge_bridge_latency_seconds histogram\n")
                .count(),
            1
        );
    }
}
