//! The WAV reader on the project's real fixtures (assets/), and write/read round trips.

use std::path::Path;

use callbridge::audio::wav::{read_wav, read_wav_file, wav_pcm16_bytes, wav_ulaw_bytes, WavFormat};

#[test]
fn reads_every_bundled_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".wav") {
            continue;
        }
        let wav = read_wav_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (rate, format) = if name.contains(".mulaw8k.") {
            (8000, WavFormat::MuLaw)
        } else if name.contains(".ref16k.") {
            (16000, WavFormat::Pcm16)
        } else if name.contains(".pcm24k.") {
            (24000, WavFormat::Pcm16)
        } else {
            (8000, WavFormat::Pcm16)
        };
        assert_eq!(
            (wav.sample_rate, wav.format, wav.channels),
            (rate, format, 1),
            "{name}"
        );
        assert!(
            wav.data.len() > rate as usize / 2,
            "{name}: {} bytes",
            wav.data.len()
        );
        if format == WavFormat::MuLaw {
            // Our writer reproduces make_fixtures.py's layout byte for byte.
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(wav_ulaw_bytes(8000, &wav.data), bytes, "{name}");
            assert_eq!(wav.to_ulaw().unwrap(), wav.data);
        } else {
            let pcm = wav.to_pcm16();
            assert_eq!(read_wav(&wav_pcm16_bytes(rate, 1, &pcm)).unwrap(), wav);
        }
        seen += 1;
    }
    assert!(
        seen >= 12,
        "expected at least the 12 fixture clips in {}",
        dir.display()
    );
}
