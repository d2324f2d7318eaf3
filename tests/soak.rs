//! Soak: many calls for several minutes through a real bridge process; its memory must
//! settle (no growth per call after warm-up, the first half of the run) and no call may fail.
//!
//! Runs `callbridge loadtest --soak-secs` (the same command docs/PERFORMANCE.md uses), which
//! starts the bridge as a child process, keeps `CALLS` calls going, each `CALL_SECS` long and
//! replaced when it ends, and samples the bridge's RSS from /proc every second.
//! `CALLBRIDGE_SOAK_SECS` / `CALLBRIDGE_SOAK_CALLS` change the size (e.g. longer runs by hand).
//!
//! Call records are on (`--records`: SQLite store plus the last 200 records in memory), as in
//! the default configuration operators run. The run is 540 s so that the warm-up (the first
//! half) covers the ~2 000 calls over which the two runtime worker threads' malloc arenas
//! reach their working size: /proc/PID/smaps of a records-on bridge showed all of the rise
//! in those two arenas (18.4 → 21.6 MB and 20.1 → 21.3 MB from 60 s to 290 s), none in
//! SQLite's thread, its page cache or any file mapping, and flat after ~240 s. A 240 s run
//! put the warm-up at 120 s, inside that climb, and read it as 1.8–3.9 KiB per call.

use std::process::Command;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn memory_settles_over_a_soak_of_many_calls() {
    let secs = env_or("CALLBRIDGE_SOAK_SECS", 540);
    let calls = env_or("CALLBRIDGE_SOAK_CALLS", 200);
    let call_secs = 20;
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let json = out_dir.join("soak.json");
    let _ = std::fs::remove_file(&json);
    let output = Command::new(env!("CARGO_BIN_EXE_callbridge"))
        .args(["loadtest", "--ramp", "40"])
        .args(["--calls", &calls.to_string()])
        .args(["--soak-secs", &secs.to_string()])
        .args(["--call-secs", &call_secs.to_string()])
        .arg("--records")
        .arg("--json")
        .arg(&json)
        .arg("--bridge-log")
        .arg(out_dir.join("soak-bridge.log"))
        .env_remove("GEMINI_API_KEY")
        .env_remove("TWILIO_AUTH_TOKEN")
        .output()
        .expect("run callbridge loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "loadtest failed\n{stdout}\n{}",
        stderr.chars().take(4000).collect::<String>()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    assert_eq!(report["calls_failed"], 0, "{report:#}");
    let completed = report["calls_completed"].as_u64().unwrap();
    // Every call is replaced when it ends: several generations of `calls` went through.
    assert!(
        completed >= calls * (secs / call_secs) / 2,
        "only {completed} calls completed"
    );
    let mem = &report["memory"];
    let after_warm = mem["calls_completed_after_warm_up"].as_u64().unwrap();
    assert!(after_warm >= calls, "too few calls after warm-up: {mem}");
    // A call costs ~200 KiB while it runs; leaking 1.5 % of that per call shows as a slope
    // above 3 KiB per call. Measured (540 s, records on, 2 305 calls after warm-up):
    // -0.69 KiB per call, RSS 63.1–64.8 MB after warm-up.
    let growth = mem["growth_kib_per_call"].as_f64().unwrap();
    assert!(
        growth < 3.0,
        "RSS grows {growth} KiB per call after warm-up: {mem}"
    );
    // And the level stays put: the spread after warm-up is under 10 % of the warm level.
    let (lo, hi, warm) = (
        mem["rss_kib_min_after_warm_up"].as_u64().unwrap(),
        mem["rss_kib_max_after_warm_up"].as_u64().unwrap(),
        mem["rss_kib_after_warm_up"].as_u64().unwrap(),
    );
    assert!(
        (hi - lo) as f64 <= 0.10 * warm as f64,
        "RSS wandered {lo}..{hi} KiB after warm-up at {warm} KiB: {mem}"
    );
    // Nothing lost: every caller frame reached the model, every frame was whole.
    assert_eq!(report["caller"]["partial_frames"], 0, "{report:#}");
    assert_eq!(report["model"]["uplink_lost_frames"], 0, "{report:#}");
    // Agent audio kept flowing: under 1 % of its frames reached a caller after the playout
    // queue had run dry (the load generator shares the two cores).
    let late = report["caller"]["late_frames"].as_u64().unwrap();
    let frames = report["caller"]["audio_received_ms"].as_u64().unwrap() / 20;
    assert!(
        late * 100 <= frames,
        "{late} late frames of {frames}: {report:#}"
    );
}
