//! Configuration: the documented file, environment overrides, validation, secret redaction.

use std::collections::HashMap;
use std::path::Path;

use callbridge::config::{Config, ConfigError};

fn env_of(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map = env_of(env);
    let get = |k: &str| map.get(k).cloned();
    let mut cfg = Config::from_toml(text, "test.toml")?;
    cfg.apply_env(&get);
    cfg.validate()?;
    Ok(cfg)
}

/// Every key of `a` (recursively) as dotted paths.
fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.push(p.clone());
            keys(v, &p, out);
        }
    }
}

#[test]
fn documented_file_lists_every_key_with_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/callbridge.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: toml::Value = toml::from_str(&text).unwrap();
    let defaults = toml::Value::try_from(Config::default()).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    keys(&file, "", &mut a);
    keys(&defaults, "", &mut b);
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "configs/callbridge.toml must document exactly the schema's keys"
    );
    assert_eq!(file, defaults, "documented values must be the defaults");
    let none = |_: &str| None;
    Config::load(Some(&path), &none).expect("documented file is valid");
}

#[test]
fn example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let none = |_: &str| None;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&p), &none).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
}

#[test]
fn environment_overrides_use_the_documented_names() {
    let cfg = load_with(
        "",
        &[
            ("CALLBRIDGE_LISTEN", "127.0.0.1:9999"),
            ("CALLBRIDGE_PUBLIC_URL", "https://bridge.example.com"),
            ("GEMINI_API_KEY", "AIza-secret-key"),
            ("CALLBRIDGE_GEMINI_URL", "ws://127.0.0.1:7000/ws/x"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "twilio-secret-token"),
            (
                "CALLBRIDGE_TWILIO_API_BASE",
                "https://api.dublin.ie1.twilio.com",
            ),
        ],
    )
    .unwrap();
    assert_eq!(cfg.server.listen, "127.0.0.1:9999");
    assert_eq!(
        cfg.stream_url().unwrap(),
        "wss://bridge.example.com/twilio/media"
    );
    assert_eq!(cfg.gemini.api_key.expose(), "AIza-secret-key");
    assert_eq!(cfg.gemini.url, "ws://127.0.0.1:7000/ws/x");
    assert_eq!(cfg.twilio.account_sid, "AC0123456789abcdef0123456789abcdef");
    assert_eq!(cfg.twilio.auth_token.expose(), "twilio-secret-token");
    assert_eq!(cfg.twilio.api_base, "https://api.dublin.ie1.twilio.com");
    let debug = format!("{cfg:?}");
    assert!(
        !debug.contains("AIza-secret-key") && !debug.contains("twilio-secret-token"),
        "{debug}"
    );
    assert!(debug.contains("[redacted]"));
}

#[test]
fn secrets_cannot_come_from_the_file() {
    let err = load_with("[gemini]\napi_key = \"x\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("api_key"), "{err}");
    let err = load_with("[twilio]\nauth_token = \"x\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("auth_token"), "{err}");
}

#[test]
fn invalid_values_name_the_key_and_value() {
    let cases = [
        ("[server]\nlisten = \"nope\"", "server.listen", "nope"),
        (
            "[server]\npublic_url = \"ftp://x\"",
            "server.public_url",
            "ftp://x",
        ),
        ("[gemini]\nvoice = \"kore\"", "gemini.voice", "kore"),
        ("[gemini]\nurl = \"https://x\"", "gemini.url", "https://x"),
        ("[gemini]\nauth = \"oauth\"", "gemini.auth", "oauth"),
        (
            "[gemini.vad]\nstart_sensitivity = \"medium\"",
            "gemini.vad.start_sensitivity",
            "medium",
        ),
        ("[playout]\nlead_ms = 30", "playout.lead_ms", "30"),
        ("[limits]\nmax_calls = 0", "limits.max_calls", "0"),
        (
            "[twilio]\naccount_sid = \"AC123\"",
            "twilio.account_sid",
            "AC123",
        ),
        (
            "[twilio]\nfallback_twiml = \"<Say>unclosed\"",
            "twilio.fallback_twiml",
            "unclosed",
        ),
        (
            "[transfer.destinations.billing]\ntarget = \"555-1234\"\ndescription = \"b\"",
            "transfer.destinations.billing.target",
            "555-1234",
        ),
    ];
    for (text, key, value) in cases {
        let err = load_with(text, &[]).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains(value),
            "{text:?} -> {err}"
        );
    }
    let err = load_with("[gemini]\nmodle = \"x\"", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("modle"), "unknown keys are named: {err}");
}

// ---- operator webhook tools: signing key and transport ---------------------------------------

const ONE_TOOL: &str = r#"
[[tools.webhooks]]
name = "lookup_order"
description = "Look up an order"
url = "https://ops.example.com/hooks/lookup_order"
"#;

#[test]
fn webhook_tools_without_a_signing_secret_are_refused_naming_the_setting() {
    for env in [&[][..], &[("CALLBRIDGE_TOOLS_SECRET", "")][..]] {
        let err = load_with(ONE_TOOL, env).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "CALLBRIDGE_TOOLS_SECRET"),
            "{msg}"
        );
        assert!(
            msg.contains("tools.secret") && msg.contains("tools.webhooks"),
            "{msg}"
        );
    }
    // Whitespace is no key either.
    assert!(load_with(ONE_TOOL, &[("CALLBRIDGE_TOOLS_SECRET", "  ")]).is_err());
    let cfg = load_with(ONE_TOOL, &[("CALLBRIDGE_TOOLS_SECRET", "op-secret")]).unwrap();
    assert_eq!(cfg.tools.secret.expose(), "op-secret");
    assert!(
        !format!("{cfg:?}").contains("op-secret"),
        "the key stays redacted"
    );
    // No webhook tools: no key needed.
    load_with("", &[]).unwrap();
}

#[test]
fn plain_http_tool_urls_need_allow_insecure_naming_the_webhook() {
    let env = [("CALLBRIDGE_TOOLS_SECRET", "op-secret")];
    let tool = |url: &str, extra: &str| {
        format!(
            "[[tools.webhooks]]\nname = \"lookup_order\"\ndescription = \"d\"\nurl = \"{url}\"\n{extra}"
        )
    };
    // No loopback exception: 127.0.0.1, localhost and [::1] over http are refused too.
    for url in [
        "http://ops.example.com/hook",
        "http://127.0.0.1:8080/tools/lookup_order",
        "http://localhost:8080/hook",
        "http://[::1]:8080/hook",
    ] {
        let err = load_with(&tool(url, ""), &env).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "tools.webhooks[0].url"),
            "{url}: {msg}"
        );
        assert!(
            msg.contains("lookup_order") && msg.contains("allow_insecure") && msg.contains(url),
            "{url}: {msg}"
        );
        let err = load_with(&tool(url, "allow_insecure = false\n"), &env).unwrap_err();
        assert!(err.to_string().contains("allow_insecure"), "{err}");
        let cfg = load_with(&tool(url, "allow_insecure = true\n"), &env)
            .unwrap_or_else(|e| panic!("{url} with allow_insecure: {e}"));
        assert!(cfg.tools.webhooks[0].allow_insecure);
    }
    // https is always fine, with or without the flag; the default is off.
    let cfg = load_with(&tool("https://ops.example.com/hook", ""), &env).unwrap();
    assert!(!cfg.tools.webhooks[0].allow_insecure);
    load_with(
        &tool("https://ops.example.com/hook", "allow_insecure = true\n"),
        &env,
    )
    .unwrap();
    // The second webhook is the one named.
    let two = format!(
        "{ONE_TOOL}\n[[tools.webhooks]]\nname = \"hours\"\ndescription = \"d\"\nurl = \"http://10.0.0.5/hours\"\n"
    );
    let msg = load_with(&two, &env).unwrap_err().to_string();
    assert!(
        msg.contains("tools.webhooks[1].url") && msg.contains("hours"),
        "{msg}"
    );
}
