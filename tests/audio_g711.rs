//! G.711 μ-law against the spec formula (telephony.md §1.9).

use callbridge::audio::g711::{ulaw_decode, ulaw_encode};

/// The expansion formula from telephony.md §1.9, written out independently of the crate.
fn spec_decode(code: u8) -> i16 {
    let u = !code;
    let e = (u >> 4) & 7;
    let m = u & 0x0F;
    let t = ((i32::from(m) << 3) + 0x84) << e;
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

#[test]
fn all_256_codes_decode_per_spec_formula() {
    for c in 0..=255u8 {
        assert_eq!(ulaw_decode(c), spec_decode(c), "code {c:#04x}");
    }
    assert_eq!(ulaw_decode(0x00), -32124);
    assert_eq!(ulaw_decode(0x7F), 0);
    assert_eq!(ulaw_decode(0x80), 32124);
    assert_eq!(ulaw_decode(0xFF), 0);
}

#[test]
fn encode_decode_round_trips_except_negative_zero() {
    for c in 0..=255u8 {
        let back = ulaw_encode(ulaw_decode(c));
        if c == 0x7F {
            // 0x7F and 0xFF both decode to 0; 0 encodes as the positive zero.
            assert_eq!(back, 0xFF);
        } else {
            assert_eq!(
                back,
                c,
                "code {c:#04x} -> {} -> {back:#04x}",
                ulaw_decode(c)
            );
        }
    }
}

/// Rank of each code's reconstruction level among the 255 distinct levels (both zeros = same).
fn level_rank() -> [i32; 256] {
    let mut levels: Vec<i16> = (0..=255u8).map(spec_decode).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut rank = [0i32; 256];
    for c in 0..=255u8 {
        rank[c as usize] = levels.binary_search(&spec_decode(c)).unwrap_or(0) as i32;
    }
    rank
}

/// Formula reference encoder: the code whose spec reconstruction value is nearest.
fn nearest_code(s: i16) -> u8 {
    (0..=255u8)
        .min_by_key(|&c| (i32::from(spec_decode(c)) - i32::from(s)).abs())
        .unwrap_or(0xFF)
}

#[test]
fn encoder_within_one_level_of_formula_reference() {
    let rank = level_rank();
    let mut mismatches = 0;
    for s in i16::MIN..=i16::MAX {
        let got = ulaw_encode(s);
        let want = nearest_code(s);
        let d = (rank[got as usize] - rank[want as usize]).abs();
        assert!(
            d <= 1,
            "sample {s}: encoder {got:#04x}, reference {want:#04x}"
        );
        mismatches += usize::from(d != 0);
    }
    // The ITU encoder is not nearest-level at the extreme (it clips at 32635 and its
    // thresholds are not exact midpoints in every segment); it must still agree almost
    // everywhere.
    assert!(
        mismatches < 65536 / 50,
        "{mismatches} of 65536 samples differ by one level"
    );
    println!("encoder differs from nearest-level reference on {mismatches} of 65536 inputs");
}

#[test]
fn encoder_is_monotonic() {
    let rank = level_rank();
    let mut prev = -1;
    for s in i16::MIN..=i16::MAX {
        let r = rank[ulaw_encode(s) as usize];
        assert!(r >= prev, "not monotonic at {s}");
        prev = r;
    }
}
