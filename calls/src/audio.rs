//! The softphone's audio: Opus at 48 kHz mono in 20 ms frames, with in-band
//! FEC and loss concealment on receive; sources (a tone, or a WAV file of
//! any rate and channel count, mixed down and resampled, or clicks); a WAV
//! sink; the Goertzel filter the tests use to tell tones apart; and the
//! click detector the benchmark times mouth-to-ear latency with.

use std::f32::consts::TAU;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use audioadapter_buffers::direct::SequentialSliceOfVecs;
use rubato::{Fft, FixedSync, Resampler};

pub const SAMPLE_RATE: u32 = 48_000;
pub const FRAME_MS: u32 = 20;
/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
/// A tone's amplitude: well below full scale.
const TONE_AMPLITUDE: f32 = 0.3;
/// A click: 5 ms of 1 kHz near full scale, starting at its peak, loud enough
/// to find after Opus.
const CLICK_SAMPLES: usize = 240;
const CLICK_HZ: f32 = 1_000.0;
const CLICK_AMPLITUDE: f32 = 0.9;
/// Speech-grade Opus: about 32 kb/s, and room for FEC.
const BITRATE_BPS: i32 = 32_000;
/// The loss levels the encoder plans its in-band FEC for (percent), and the
/// margin a measured loss must clear to move to a level from below (or fall
/// under to leave it), so that a loss near a step does not flap.
const LOSS_LEVELS_PCT: [(u8, f64); 4] = [(20, 2.0), (10, 1.0), (5, 1.0), (1, 0.0)];
/// Largest Opus packet the encoder may produce.
const PACKET_BYTES_MAX: usize = 1_275;
/// Longest WAV file accepted (an hour): a source is held in memory.
const WAV_SECONDS_MAX: u64 = 3_600;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Spec(String),
    #[error("opus: {0}")]
    Codec(String),
}

impl From<opus::Error> for AudioError {
    fn from(error: opus::Error) -> Self {
        AudioError::Codec(error.to_string())
    }
}

/// What a softphone sends.
#[derive(Debug, Clone)]
pub enum Source {
    /// A sine wave (`tone:440`).
    Tone {
        hz: f32,
        phase: f32,
    },
    /// Samples at 48 kHz mono, played once; silence follows.
    Samples {
        samples: Vec<f32>,
        position: usize,
    },
    /// A click every `every` samples, silence between (`clicks:500`).
    Clicks {
        every: usize,
        position: usize,
    },
    Silence,
}

impl Source {
    /// `tone:HZ` or the path of a WAV file.
    pub fn parse(spec: &str) -> Result<Source, AudioError> {
        if let Some(hz) = spec.strip_prefix("tone:") {
            let hz: f32 =
                hz.parse().map_err(|_| AudioError::Spec(format!("{spec:?}: a tone is tone:HZ, e.g. tone:440")))?;
            if !(20.0..=20_000.0).contains(&hz) {
                return Err(AudioError::Spec(format!("{spec:?}: a tone is between 20 and 20000 Hz")));
            }
            return Ok(Source::Tone { hz, phase: 0.0 });
        }
        if let Some(ms) = spec.strip_prefix("clicks:") {
            let ms: u32 = ms
                .parse()
                .ok()
                .filter(|ms| (50..=10_000).contains(ms))
                .ok_or_else(|| AudioError::Spec(format!("{spec:?}: clicks are clicks:MS, every 50 to 10000 ms")))?;
            return Ok(Source::Clicks { every: (ms * SAMPLE_RATE / 1_000) as usize, position: 0 });
        }
        Ok(Source::Samples { samples: read_wav(Path::new(spec))?, position: 0 })
    }

    /// The next 20 ms.
    pub fn next_frame(&mut self, frame: &mut [i16; FRAME_SAMPLES]) {
        match self {
            Source::Tone { hz, phase } => {
                let step = TAU * *hz / SAMPLE_RATE as f32;
                for sample in frame.iter_mut() {
                    *sample = to_i16(TONE_AMPLITUDE * phase.sin());
                    *phase = (*phase + step) % TAU;
                }
            }
            Source::Samples { samples, position } => {
                for sample in frame.iter_mut() {
                    *sample = samples.get(*position).map_or(0, |value| to_i16(*value));
                    *position += 1;
                }
            }
            Source::Clicks { every, position } => {
                for sample in frame.iter_mut() {
                    let at = *position % *every;
                    *sample = if at < CLICK_SAMPLES {
                        to_i16(CLICK_AMPLITUDE * (TAU * CLICK_HZ * at as f32 / SAMPLE_RATE as f32).cos())
                    } else {
                        0
                    };
                    *position += 1;
                }
            }
            Source::Silence => frame.fill(0),
        }
    }

    /// A file source that has played to its end.
    pub fn finished(&self) -> bool {
        matches!(self, Source::Samples { samples, position } if *position >= samples.len())
    }
}

/// Finds the onsets of clicks in a stream of samples: the first sample
/// above a threshold after at least `quiet` samples below it.
#[derive(Debug, Clone)]
pub struct ClickDetector {
    threshold: i16,
    quiet: usize,
    below: usize,
}

impl ClickDetector {
    /// A detector for [`Source::Clicks`]: a quarter of full scale, after 100 ms of quiet.
    pub fn new() -> ClickDetector {
        let quiet = SAMPLE_RATE as usize / 10;
        ClickDetector { threshold: i16::MAX / 4, quiet, below: quiet }
    }

    /// The offsets in `samples` where a click begins.
    pub fn onsets(&mut self, samples: &[i16]) -> Vec<usize> {
        let mut found = Vec::new();
        for (offset, sample) in samples.iter().enumerate() {
            if sample.unsigned_abs() > self.threshold.unsigned_abs() {
                if self.below >= self.quiet {
                    found.push(offset);
                }
                self.below = 0;
            } else {
                self.below += 1;
            }
        }
        found
    }
}

impl Default for ClickDetector {
    fn default() -> Self {
        ClickDetector::new()
    }
}

fn to_i16(value: f32) -> i16 {
    (value.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16
}

/// A WAV file as 48 kHz mono samples in [-1, 1]: channels are averaged and
/// other rates resampled.
pub fn read_wav(path: &Path) -> Result<Vec<f32>, AudioError> {
    let fail = |reason: String| AudioError::File { path: path.to_owned(), reason };
    let reader = hound::WavReader::open(path).map_err(|error| fail(format!("cannot be read as WAV: {error}")))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 || spec.sample_rate < 8_000 || spec.sample_rate > 384_000 {
        return Err(fail(format!("{} channels at {} Hz cannot be played", spec.channels, spec.sample_rate)));
    }
    if u64::from(reader.duration()) > WAV_SECONDS_MAX * u64::from(spec.sample_rate) {
        return Err(fail(format!("longer than {WAV_SECONDS_MAX} s")));
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader.into_samples::<f32>().collect::<Result<_, _>>(),
        (hound::SampleFormat::Int, bits @ 8..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader.into_samples::<i32>().map(|sample| sample.map(|value| value as f32 * scale)).collect()
        }
        (format, bits) => return Err(fail(format!("{bits}-bit {format:?} samples are not supported"))),
    }
    .map_err(|error| fail(format!("damaged WAV data: {error}")))?;
    let mono: Vec<f32> =
        interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() / channels as f32).collect();
    if spec.sample_rate == SAMPLE_RATE {
        return Ok(mono);
    }
    resample(&mono, spec.sample_rate).map_err(fail)
}

/// Band-limited resampling to 48 kHz.
fn resample(samples: &[f32], rate: u32) -> Result<Vec<f32>, String> {
    if samples.is_empty() {
        return Ok(Vec::new());
    }
    let mut resampler = Fft::<f32>::new(rate as usize, SAMPLE_RATE as usize, 1_024, 1, FixedSync::Input)
        .map_err(|error| format!("cannot resample from {rate} Hz: {error}"))?;
    let input = vec![samples.to_vec()];
    let adapter = SequentialSliceOfVecs::new(&input, 1, samples.len()).map_err(|error| error.to_string())?;
    let output = resampler.process_all(&adapter, samples.len(), None).map_err(|error| error.to_string())?;
    Ok(output.take_data())
}

/// A 48 kHz mono 16-bit WAV file being written.
pub struct WavSink {
    writer: hound::WavWriter<BufWriter<File>>,
}

impl WavSink {
    pub fn create(path: &Path) -> Result<WavSink, AudioError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|error| AudioError::File {
            path: path.to_owned(),
            reason: format!("cannot be written: {error}"),
        })?;
        Ok(WavSink { writer })
    }

    pub fn write(&mut self, samples: &[i16]) -> Result<(), AudioError> {
        for &sample in samples {
            self.writer.write_sample(sample).map_err(|error| AudioError::Spec(format!("recording: {error}")))?;
        }
        Ok(())
    }

    /// Writes the header's lengths; a sink dropped without it leaves a file
    /// whose header hound repairs on drop, at best.
    pub fn finish(self) -> Result<(), AudioError> {
        self.writer.finalize().map_err(|error| AudioError::Spec(format!("recording: {error}")))
    }
}

/// Opus for speech: 48 kHz mono, 20 ms frames, in-band FEC planned for the
/// loss the far end reports.
pub struct Encoder {
    opus: opus::Encoder,
    expected_loss_pct: u8,
}

impl Encoder {
    /// An encoder that expects no loss (no FEC bits) until told otherwise.
    pub fn new() -> Result<Encoder, AudioError> {
        let mut opus = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        opus.set_bitrate(opus::Bitrate::Bits(BITRATE_BPS))?;
        opus.set_inband_fec(true)?;
        opus.set_packet_loss_perc(0)?;
        Ok(Encoder { opus, expected_loss_pct: 0 })
    }

    /// Plans the FEC for `loss_pct`, the loss the far end sees (smoothed by
    /// the caller): FEC costs the speech itself bits, so a clean path gets
    /// none, and a lossy one as much as its level calls for.
    pub fn expect_loss(&mut self, loss_pct: f64) -> Result<(), AudioError> {
        let level = expected_loss_level(loss_pct, self.expected_loss_pct);
        if level != self.expected_loss_pct {
            self.opus.set_packet_loss_perc(i32::from(level))?;
            self.expected_loss_pct = level;
        }
        Ok(())
    }

    /// The loss (percent) the encoder plans its FEC for.
    pub fn expected_loss_pct(&self) -> u8 {
        self.expected_loss_pct
    }

    pub fn encode(&mut self, frame: &[i16; FRAME_SAMPLES]) -> Result<Vec<u8>, AudioError> {
        Ok(self.opus.encode_vec(frame, PACKET_BYTES_MAX)?)
    }
}

/// The level of [`LOSS_LEVELS_PCT`] a measured loss calls for, given the
/// level in force: a level is entered above its value plus its margin and
/// kept down to its value less the margin.
fn expected_loss_level(loss_pct: f64, current: u8) -> u8 {
    LOSS_LEVELS_PCT
        .iter()
        .find(|(level, margin)| {
            let threshold = f64::from(*level) + if current >= *level { -margin } else { *margin };
            loss_pct >= threshold
        })
        .map_or(0, |(level, _)| *level)
}

pub struct Decoder {
    opus: opus::Decoder,
}

impl Decoder {
    pub fn new() -> Result<Decoder, AudioError> {
        Ok(Decoder { opus: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)? })
    }

    /// The 20 ms a packet carries.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, AudioError> {
        self.run(packet, false)
    }

    /// The frame before `next`, rebuilt from the FEC data `next` carries.
    pub fn recover(&mut self, next: &[u8]) -> Result<Vec<i16>, AudioError> {
        self.run(next, true)
    }

    /// A frame to fill a gap nothing can rebuild (packet loss concealment).
    pub fn conceal(&mut self) -> Result<Vec<i16>, AudioError> {
        self.run(&[], false)
    }

    fn run(&mut self, packet: &[u8], fec: bool) -> Result<Vec<i16>, AudioError> {
        let mut frame = vec![0i16; FRAME_SAMPLES];
        let samples = self.opus.decode(packet, &mut frame, fec)?;
        frame.truncate(samples);
        Ok(frame)
    }
}

/// The power of `hz` in `samples` (Goertzel), normalised by length.
pub fn goertzel(samples: &[i16], hz: f32) -> f32 {
    let coefficient = 2.0 * (TAU * hz / SAMPLE_RATE as f32).cos();
    let (mut previous, mut before) = (0.0f32, 0.0f32);
    for &sample in samples {
        let current = f32::from(sample) / f32::from(i16::MAX) + coefficient * previous - before;
        before = previous;
        previous = current;
    }
    let power = previous * previous + before * before - coefficient * previous * before;
    power / (samples.len().max(1) as f32)
}

/// Which of `candidates` is loudest in `samples`, if any stands out from
/// silence.
pub fn dominant(samples: &[i16], candidates: &[f32]) -> Option<f32> {
    let powers: Vec<(f32, f32)> = candidates.iter().map(|&hz| (hz, goertzel(samples, hz))).collect();
    let (hz, power) = powers.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))?;
    // A tone of amplitude A over n samples gives about A²·n/4 (a 0.3 tone over
    // 20 ms: about 22); silence gives 0.
    (power > 1e-3).then_some(hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(source: &mut Source, count: usize) -> Vec<[i16; FRAME_SAMPLES]> {
        (0..count)
            .map(|_| {
                let mut frame = [0i16; FRAME_SAMPLES];
                source.next_frame(&mut frame);
                frame
            })
            .collect()
    }

    #[test]
    fn a_tone_survives_opus() {
        let mut source = Source::parse("tone:440").unwrap();
        let (mut encoder, mut decoder) = (Encoder::new().unwrap(), Decoder::new().unwrap());
        let mut heard = Vec::new();
        for frame in frames(&mut source, 50) {
            let packet = encoder.encode(&frame).unwrap();
            assert!(packet.len() < 200, "speech-sized packets: {}", packet.len());
            heard.extend(decoder.decode(&packet).unwrap());
        }
        assert_eq!(heard.len(), 50 * FRAME_SAMPLES);
        // Skip the codec's start-up; every later 100 ms is the tone.
        for window in heard[4_800..].chunks(4_800) {
            assert_eq!(dominant(window, &[440.0, 880.0, 1_000.0]), Some(440.0));
        }
    }

    #[test]
    fn lost_packets_are_rebuilt_or_concealed() {
        let mut source = Source::Tone { hz: 880.0, phase: 0.0 };
        let (mut encoder, mut decoder) = (Encoder::new().unwrap(), Decoder::new().unwrap());
        encoder.expect_loss(10.0).unwrap();
        let packets: Vec<Vec<u8>> =
            frames(&mut source, 40).iter().map(|frame| encoder.encode(frame).unwrap()).collect();
        let mut heard = Vec::new();
        for (index, packet) in packets.iter().enumerate() {
            match index {
                20 => continue, // lost; rebuilt from the next packet's FEC
                21 => heard.extend(decoder.recover(packet).unwrap()),
                30 => {
                    // lost with nothing to rebuild it from
                    heard.extend(decoder.conceal().unwrap());
                    continue;
                }
                _ => {}
            }
            heard.extend(decoder.decode(packet).unwrap());
        }
        assert_eq!(heard.len(), 40 * FRAME_SAMPLES);
        let gap = &heard[19 * FRAME_SAMPLES..23 * FRAME_SAMPLES];
        assert_eq!(dominant(gap, &[440.0, 880.0]), Some(880.0), "the tone carries on through the losses");
        let concealed = &heard[29 * FRAME_SAMPLES..32 * FRAME_SAMPLES];
        assert_eq!(dominant(concealed, &[440.0, 880.0]), Some(880.0));
    }

    #[test]
    fn fec_is_planned_for_the_loss_reported_and_does_not_flap() {
        let mut encoder = Encoder::new().unwrap();
        assert_eq!(encoder.expected_loss_pct(), 0, "a clean path spends no bits on FEC");
        let mut levels = Vec::new();
        for loss in [0.5, 1.0, 5.5, 6.5, 4.5, 3.9, 10.5, 11.2, 9.2, 8.9, 25.0, 18.5, 17.9, 0.0] {
            encoder.expect_loss(loss).unwrap();
            levels.push(encoder.expected_loss_pct());
        }
        // Up a level past its value plus the margin, down below it less the margin.
        assert_eq!(levels, [0, 1, 1, 5, 5, 1, 5, 10, 10, 5, 20, 20, 10, 0]);
    }

    #[test]
    fn wav_files_of_any_rate_and_layout_play_at_48_khz_mono() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo-44k.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for n in 0..44_100 {
            let value = to_i16(0.3 * (TAU * 600.0 * n as f32 / 44_100.0).sin());
            writer.write_sample(value).unwrap();
            writer.write_sample(value).unwrap();
        }
        writer.finalize().unwrap();
        let samples = read_wav(&path).unwrap();
        assert!((47_000..=49_500).contains(&samples.len()), "about a second at 48 kHz: {}", samples.len());
        let mut source = Source::Samples { samples, position: 0 };
        let played: Vec<i16> = frames(&mut source, 40).concat();
        assert_eq!(dominant(&played[4_800..], &[440.0, 600.0, 880.0]), Some(600.0), "the pitch is kept");
        frames(&mut source, 20);
        assert!(source.finished());

        // The sink writes what a player reads back.
        let recorded = dir.path().join("recorded.wav");
        let mut sink = WavSink::create(&recorded).unwrap();
        sink.write(&played).unwrap();
        sink.finish().unwrap();
        assert_eq!(read_wav(&recorded).unwrap().len(), played.len());
    }

    #[test]
    fn what_cannot_be_played_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Source::parse(dir.path().join("missing.wav").to_str().unwrap()).unwrap_err();
        assert!(missing.to_string().contains("missing.wav: cannot be read as WAV"), "{missing}");
        let text = dir.path().join("notes.wav");
        std::fs::write(&text, "not a wav file").unwrap();
        assert!(Source::parse(text.to_str().unwrap()).unwrap_err().to_string().contains("cannot be read as WAV"));
        for bad in ["tone:", "tone:abc", "tone:5", "tone:30000", "clicks:", "clicks:10", "clicks:-5", "clicks:99999"] {
            assert!(matches!(Source::parse(bad), Err(AudioError::Spec(_))), "{bad}");
        }
    }

    /// Clicks survive Opus and are found once each, a few milliseconds
    /// (the codec's look-ahead) after where they were sent.
    #[test]
    fn clicks_are_found_once_each_after_opus() {
        let mut source = Source::parse("clicks:500").unwrap();
        let (mut encoder, mut decoder) = (Encoder::new().unwrap(), Decoder::new().unwrap());
        let (mut sent, mut heard) = (ClickDetector::new(), ClickDetector::new());
        let (mut sent_at, mut heard_at) = (Vec::new(), Vec::new());
        for (index, frame) in frames(&mut source, 100).iter().enumerate() {
            sent_at.extend(sent.onsets(frame).iter().map(|offset| index * FRAME_SAMPLES + offset));
            let decoded = decoder.decode(&encoder.encode(frame).unwrap()).unwrap();
            heard_at.extend(heard.onsets(&decoded).iter().map(|offset| index * FRAME_SAMPLES + offset));
        }
        assert_eq!(sent_at, [0, 24_000, 48_000, 72_000]);
        assert_eq!(heard_at.len(), 4, "{heard_at:?}");
        for (sent, heard) in sent_at.iter().zip(&heard_at) {
            let delay_ms = (*heard as f64 - *sent as f64) / 48.0;
            assert!((0.0..15.0).contains(&delay_ms), "{sent} → {heard}");
        }
    }

    #[test]
    fn goertzel_tells_tones_from_silence() {
        let silence = [0i16; FRAME_SAMPLES * 5];
        assert_eq!(dominant(&silence, &[440.0, 880.0]), None);
        let mut tone = Source::Tone { hz: 440.0, phase: 0.0 };
        let samples: Vec<i16> = frames(&mut tone, 5).concat();
        assert!(goertzel(&samples, 440.0) > 100.0 * goertzel(&samples, 880.0));
    }
}
