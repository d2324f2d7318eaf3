//! G.711 μ-law (ITU-T G.711) sample conversion.
//!
//! Owns the mapping between 8-bit μ-law codes and 16-bit linear PCM, one sample and whole
//! buffers at a time. It does not resample, frame or carry any state; the streaming
//! pipelines live in [`crate::audio::transcode`].
//!
//! The codec itself comes from the `audio-codec-algorithms` crate: its decoder is a table
//! generated with the ITU G.191 tools, and its encoder follows TI application note SPRA163A.

use audio_codec_algorithms::{decode_ulaw, encode_ulaw};

/// Decodes one μ-law code to a 16-bit linear sample (ITU-T G.711).
///
/// Anchors: `0x00 → -32124`, `0x7F → 0`, `0x80 → 32124`, `0xFF → 0`.
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    decode_ulaw(code)
}

/// Encodes one 16-bit linear sample to a μ-law code (ITU-T G.711).
///
/// Zero encodes to `0xFF` (the positive zero), which is what a silent line carries.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    encode_ulaw(sample)
}

/// Decodes a buffer of μ-law codes, appending the linear samples to `out`.
pub fn ulaw_decode_into(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_decode(c)));
}

/// Encodes a buffer of linear samples, appending the μ-law codes to `out`.
pub fn ulaw_encode_into(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| ulaw_encode(s)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors() {
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_encode(0), 0xFF);
    }
}
