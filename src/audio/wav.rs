//! A small RIFF/WAVE reader and writer for 16-bit PCM and G.711 μ-law (format tag 7).
//!
//! Owns the container only: chunk walking, the `fmt ` fields we need, and writing the two
//! formats this project produces. It does not resample or interpret audio beyond turning
//! μ-law into linear samples on request. `hound` cannot read μ-law WAV (tag 7), which is how
//! call recordings and the project's fixtures are stored, hence this module.

use std::path::Path;

use crate::audio::g711::{ulaw_decode, ulaw_encode};

/// WAVE format tag for integer PCM.
const TAG_PCM: u16 = 1;
/// WAVE format tag for G.711 μ-law.
const TAG_MULAW: u16 = 7;
/// WAVE_FORMAT_EXTENSIBLE; the real tag sits in the sub-format GUID.
const TAG_EXTENSIBLE: u16 = 0xFFFE;

/// Sample encoding of a [`Wav`]'s `data` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavFormat {
    /// 16-bit signed little-endian linear PCM.
    Pcm16,
    /// G.711 μ-law, one byte per sample.
    MuLaw,
}

/// A decoded WAV file: the format and the raw sample bytes exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wav {
    /// Frames per second.
    pub sample_rate: u32,
    /// Interleaved channel count.
    pub channels: u16,
    /// Encoding of `data`.
    pub format: WavFormat,
    /// Raw sample bytes as stored (little-endian s16 or μ-law codes).
    pub data: Vec<u8>,
}

/// Why a byte buffer is not a WAV file this module can read.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    /// The file could not be read from disk.
    #[error("cannot read wav file {path}: {source}")]
    Io {
        /// The path that failed.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The first 12 bytes are not `RIFF....WAVE`.
    #[error("not a riff/wave file (header {0:?})")]
    NotRiff(Vec<u8>),
    /// A chunk header claims more bytes than the file holds.
    #[error("chunk {id:?} claims {len} bytes but only {available} remain")]
    TruncatedChunk {
        /// The four-character chunk id.
        id: String,
        /// Declared chunk length.
        len: u32,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// No `fmt ` chunk before the end of the file.
    #[error("no fmt chunk")]
    MissingFmt,
    /// No `data` chunk before the end of the file.
    #[error("no data chunk")]
    MissingData,
    /// The `fmt ` chunk is shorter than the 16 bytes every format needs.
    #[error("fmt chunk is {0} bytes, need at least 16")]
    ShortFmt(u32),
    /// A format tag / bit depth combination other than 16-bit PCM or 8-bit μ-law.
    #[error("unsupported wav format tag {tag} with {bits} bits per sample")]
    Unsupported {
        /// The format tag (after resolving WAVE_FORMAT_EXTENSIBLE).
        tag: u16,
        /// Bits per sample.
        bits: u16,
    },
    /// Zero channels or a zero sample rate.
    #[error("invalid wav header: {channels} channels at {sample_rate} Hz")]
    BadHeader {
        /// Declared channel count.
        channels: u16,
        /// Declared sample rate.
        sample_rate: u32,
    },
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Parses a WAV file held in memory.
///
/// Tolerates extra chunks (`fact`, `LIST`, ...) in any order and the pad byte after
/// odd-length chunks. A `data` chunk whose declared length runs past the end of the buffer
/// (common for files written by streaming recorders) is truncated to what is present; any
/// other truncated chunk is an error.
pub fn read_wav(bytes: &[u8]) -> Result<Wav, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotRiff(bytes[..bytes.len().min(12)].to_vec()));
    }
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    let mut data: Option<&[u8]> = None;
    let mut i = 12;
    while i + 8 <= bytes.len() {
        let id = &bytes[i..i + 4];
        let len = u32_at(bytes, i + 4);
        let body_start = i + 8;
        let available = bytes.len() - body_start;
        let body_len = if (len as usize) <= available {
            len as usize
        } else if id == b"data" {
            available
        } else {
            return Err(WavError::TruncatedChunk {
                id: String::from_utf8_lossy(id).into_owned(),
                len,
                available,
            });
        };
        let body = &bytes[body_start..body_start + body_len];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(WavError::ShortFmt(len));
                }
                let mut tag = u16_at(body, 0);
                let channels = u16_at(body, 2);
                let rate = u32_at(body, 4);
                let bits = u16_at(body, 14);
                // WAVE_FORMAT_EXTENSIBLE: the first two bytes of the sub-format GUID (at
                // offset 24) hold the real format tag.
                if tag == TAG_EXTENSIBLE && body.len() >= 26 {
                    tag = u16_at(body, 24);
                }
                fmt = Some((tag, channels, rate, bits));
            }
            b"data" => data = Some(body),
            _ => {}
        }
        // Chunks are word-aligned: odd lengths are followed by one pad byte.
        i = body_start + body_len + (body_len & 1);
    }
    let (tag, channels, sample_rate, bits) = fmt.ok_or(WavError::MissingFmt)?;
    let data = data.ok_or(WavError::MissingData)?;
    if channels == 0 || sample_rate == 0 {
        return Err(WavError::BadHeader {
            channels,
            sample_rate,
        });
    }
    let format = match (tag, bits) {
        (TAG_PCM, 16) => WavFormat::Pcm16,
        (TAG_MULAW, 8) => WavFormat::MuLaw,
        _ => return Err(WavError::Unsupported { tag, bits }),
    };
    Ok(Wav {
        sample_rate,
        channels,
        format,
        data: data.to_vec(),
    })
}

/// Reads and parses a WAV file from disk; see [`read_wav`].
pub fn read_wav_file(path: &Path) -> Result<Wav, WavError> {
    let bytes = std::fs::read(path).map_err(|source| WavError::Io {
        path: path.display().to_string(),
        source,
    })?;
    read_wav(&bytes)
}

impl Wav {
    /// The samples as 16-bit linear PCM (interleaved if multi-channel); μ-law is decoded.
    /// A trailing odd byte of PCM data is ignored.
    pub fn to_pcm16(&self) -> Vec<i16> {
        match self.format {
            WavFormat::Pcm16 => self
                .data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
            WavFormat::MuLaw => self.data.iter().map(|&c| ulaw_decode(c)).collect(),
        }
    }

    /// The samples as μ-law codes: the stored codes for a μ-law file, or PCM encoded to
    /// μ-law when the file is mono 8 kHz PCM. `None` for PCM at any other rate or channel
    /// count (encoding those would need resampling, which is not this module's job).
    pub fn to_ulaw(&self) -> Option<Vec<u8>> {
        match self.format {
            WavFormat::MuLaw => Some(self.data.clone()),
            WavFormat::Pcm16 if self.sample_rate == 8000 && self.channels == 1 => {
                Some(self.to_pcm16().into_iter().map(ulaw_encode).collect())
            }
            WavFormat::Pcm16 => None,
        }
    }
}

fn riff(fmt: &[u8], extra: &[(&[u8; 4], &[u8])], data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(fmt.len() + data.len() + 64);
    body.extend_from_slice(b"fmt ");
    body.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
    body.extend_from_slice(fmt);
    for (id, chunk) in extra {
        body.extend_from_slice(*id);
        body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        body.extend_from_slice(chunk);
    }
    body.extend_from_slice(b"data");
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(data);
    if data.len() % 2 == 1 {
        body.push(0);
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(4 + body.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(&body);
    out
}

/// A complete 16-bit PCM WAV file (`samples` interleaved when `channels > 1`).
pub fn wav_pcm16_bytes(sample_rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
    let block_align = 2 * channels;
    let mut fmt = Vec::with_capacity(16);
    fmt.extend_from_slice(&TAG_PCM.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&sample_rate.to_le_bytes());
    fmt.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    fmt.extend_from_slice(&block_align.to_le_bytes());
    fmt.extend_from_slice(&16u16.to_le_bytes());
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    riff(&fmt, &[], &data)
}

/// A complete mono G.711 μ-law WAV file: format tag 7 with an 18-byte `fmt ` chunk and a
/// `fact` chunk, laid out like the project's `make_fixtures.py` writes them.
pub fn wav_ulaw_bytes(sample_rate: u32, ulaw: &[u8]) -> Vec<u8> {
    let mut fmt = Vec::with_capacity(18);
    fmt.extend_from_slice(&TAG_MULAW.to_le_bytes());
    fmt.extend_from_slice(&1u16.to_le_bytes());
    fmt.extend_from_slice(&sample_rate.to_le_bytes());
    fmt.extend_from_slice(&sample_rate.to_le_bytes());
    fmt.extend_from_slice(&1u16.to_le_bytes());
    fmt.extend_from_slice(&8u16.to_le_bytes());
    fmt.extend_from_slice(&0u16.to_le_bytes());
    let fact = (ulaw.len() as u32).to_le_bytes();
    riff(&fmt, &[(b"fact", &fact)], ulaw)
}

/// Writes a 16-bit PCM WAV file.
pub fn write_wav_pcm16(
    path: &Path,
    sample_rate: u32,
    channels: u16,
    samples: &[i16],
) -> std::io::Result<()> {
    std::fs::write(path, wav_pcm16_bytes(sample_rate, channels, samples))
}

/// Writes a mono μ-law WAV file (format tag 7 + `fact` chunk).
pub fn write_wav_ulaw(path: &Path, sample_rate: u32, ulaw: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, wav_ulaw_bytes(sample_rate, ulaw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_round_trip() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN, 1234];
        let wav = read_wav(&wav_pcm16_bytes(16000, 1, &samples)).unwrap();
        assert_eq!(wav.sample_rate, 16000);
        assert_eq!(wav.channels, 1);
        assert_eq!(wav.format, WavFormat::Pcm16);
        assert_eq!(wav.to_pcm16(), samples);
        assert_eq!(wav.to_ulaw(), None);
    }

    #[test]
    fn ulaw_round_trip_with_odd_length_and_fact() {
        let codes = [0x00u8, 0x7F, 0x80, 0xFF, 0x12];
        let bytes = wav_ulaw_bytes(8000, &codes);
        assert_eq!(bytes.len() % 2, 0, "odd data chunk must be padded");
        let wav = read_wav(&bytes).unwrap();
        assert_eq!(wav.format, WavFormat::MuLaw);
        assert_eq!(wav.data, codes);
        assert_eq!(wav.to_ulaw().unwrap(), codes);
        assert_eq!(wav.to_pcm16()[0], -32124);
    }

    #[test]
    fn skips_list_chunk_and_pad() {
        // RIFF with an odd-length LIST chunk (padded) before fmt and data.
        let mut body = Vec::new();
        body.extend_from_slice(b"LIST");
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(b"abc\0");
        let inner = wav_pcm16_bytes(8000, 1, &[7, -7]);
        body.extend_from_slice(&inner[12..]);
        let mut bytes = b"RIFF".to_vec();
        bytes.extend_from_slice(&(4 + body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(b"WAVE");
        bytes.extend_from_slice(&body);
        let wav = read_wav(&bytes).unwrap();
        assert_eq!(wav.to_pcm16(), vec![7, -7]);
        assert_eq!(wav.to_ulaw().unwrap().len(), 2);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(read_wav(b"nope"), Err(WavError::NotRiff(_))));
        let mut bytes = wav_pcm16_bytes(8000, 1, &[1, 2]);
        bytes[20] = 3; // format tag 3 = float
        assert!(matches!(
            read_wav(&bytes),
            Err(WavError::Unsupported { tag: 3, bits: 16 })
        ));
        let bytes = wav_pcm16_bytes(8000, 1, &[1, 2]);
        assert!(matches!(
            read_wav(&bytes[..30]),
            Err(WavError::TruncatedChunk { .. })
        ));
    }
}
