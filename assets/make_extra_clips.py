"""Extra model clips for the simulator's demo scenario, made exactly like
shared/fixtures/make_fixtures.py makes model_*.pcm24k.wav (espeak-ng en-gb, soxr VHQ to
24 kHz, x0.7). Run: python3 assets/make_extra_clips.py assets   (needs espeak-ng, numpy, soxr)"""
import io, subprocess, sys, wave, pathlib
import numpy as np, soxr

OUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "assets")
MODEL = {
    "model_goodbye": "You're welcome. Thanks for calling, and have a great day. Goodbye!",
    "model_transfer": "Of course. I am transferring you to our billing team now. Please hold.",
}
for name, text in MODEL.items():
    raw = subprocess.run(["espeak-ng", "-v", "en-gb", "-s", "165", "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(raw)) as w:
        sr = w.getframerate(); x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
    m24 = soxr.resample(x, sr, 24000, "VHQ") * 0.7
    with wave.open(str(OUT / f"{name}.pcm24k.wav"), "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(24000)
        w.writeframes((np.clip(m24, -1, 1) * 32767).astype("<i2").tobytes())
print("wrote", list(MODEL))
