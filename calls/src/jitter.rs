//! The softphone's jitter buffer: packets go in as they arrive, in any
//! order; one 20 ms frame comes out per tick of the playout clock.
//!
//! - **Delay.** Playout starts [`JitterBuffer::target_ms`] after the first
//!   packet and aims to trail the sender by that much: `JITTER_FACTOR`
//!   times the RFC 3550 interarrival jitter, within [`DELAY_MIN_MS`] and
//!   [`DELAY_MAX_MS`]. How far it trails is reckoned from the newest packet
//!   and the time since it came, so a lost burst is not taken for a short
//!   delay. A frame missing while the playout point trails by less than the
//!   target is waited for (concealed without moving on: the delay grows by
//!   a frame), as is one after a packet came after its turn; when it trails
//!   by two frames more than the target for half a second (a burst after a
//!   spike, or a sender whose clock runs fast), one frame is dropped.
//! - **Order.** Frames play in sequence order; a packet whose turn has passed
//!   is late and dropped, a second copy of one is a duplicate and dropped.
//! - **Loss.** A missing frame whose successor is there is recovered from
//!   the successor's in-band FEC (Opus LBRR); otherwise it is concealed
//!   (Opus PLC).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::audio::FRAME_MS;

/// The least delay aimed at.
pub const DELAY_MIN_MS: u32 = 20;
/// The most delay aimed at; a path that jitters more is heard with gaps.
pub const DELAY_MAX_MS: u32 = 200;
/// The delay aimed at, in multiples of the measured jitter.
const JITTER_FACTOR: f64 = 3.0;
/// Ticks the buffer may hold more than it aims at (by two frames or more)
/// before it drops a frame.
const EXCESS_TICKS: u32 = 25;
/// A packet this many frames ahead of the playout point restarts the
/// stream there (the sender was away, or jumped).
const RESYNC_FRAMES: u64 = 50;
/// At most this many frames are held (a second of audio).
const FRAMES_HELD_MAX: usize = 50;
/// RTP timestamp units per millisecond (Opus: 48 kHz).
const UNITS_PER_MS: f64 = 48.0;

/// What the playout clock's tick yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// This packet's frame.
    Decode(Vec<u8>),
    /// The frame before this packet, from its in-band FEC.
    Recover(Vec<u8>),
    /// Nothing to play: the decoder conceals the gap.
    Conceal,
}

/// What the buffer did over a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub played: u64,
    /// Frames rebuilt from the next packet's FEC.
    pub recovered: u64,
    /// Frames concealed: lost with no FEC at hand, or not there in time.
    pub concealed: u64,
    /// Packets that came after their turn.
    pub late: u64,
    pub duplicates: u64,
    /// Frames dropped to bring the delay back down.
    pub dropped: u64,
}

#[derive(Debug)]
pub struct JitterBuffer {
    frames: BTreeMap<u64, Vec<u8>>,
    /// The extended sequence number to play next, once playout started.
    next: Option<u64>,
    highest: Option<u64>,
    /// When the packet with the highest sequence number came.
    highest_arrival: Option<Instant>,
    first_arrival: Option<Instant>,
    /// Ticks to wait (the delay to grow by) after packets came too late.
    hold: u32,
    /// The last packet's arrival and RTP timestamp, for the jitter estimate.
    last: Option<(Instant, u32)>,
    jitter_ms: f64,
    excess_ticks: u32,
    stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl JitterBuffer {
    pub fn new() -> JitterBuffer {
        JitterBuffer {
            frames: BTreeMap::new(),
            next: None,
            highest: None,
            highest_arrival: None,
            first_arrival: None,
            hold: 0,
            last: None,
            jitter_ms: 0.0,
            excess_ticks: 0,
            stats: JitterStats::default(),
        }
    }

    /// The sequence number extended past its 16 bits, relative to the
    /// highest one seen (a packet at most 32,767 behind or ahead).
    fn extend(&self, sequence: u16) -> u64 {
        match self.highest {
            None => (1 << 32) + u64::from(sequence),
            Some(highest) => {
                let delta = i64::from(sequence.wrapping_sub(highest as u16) as i16);
                (highest as i64 + delta).max(0) as u64
            }
        }
    }

    /// A packet as it arrives.
    pub fn push(&mut self, sequence: u16, timestamp: u32, payload: Vec<u8>, arrived: Instant) {
        if let Some((then, then_timestamp)) = self.last {
            // RFC 3550, 6.4.1: how much the spacing of arrivals differs from
            // the spacing of the timestamps, smoothed over 16 packets.
            let arrivals_ms = signed_ms(arrived, then);
            let sent_ms = f64::from(timestamp.wrapping_sub(then_timestamp) as i32) / UNITS_PER_MS;
            self.jitter_ms += ((arrivals_ms - sent_ms).abs() - self.jitter_ms) / 16.0;
        }
        self.last = Some((arrived, timestamp));
        let extended = self.extend(sequence);
        if let Some(next) = self.next {
            if extended + RESYNC_FRAMES <= next || extended >= next + RESYNC_FRAMES {
                // The sender paused (its sequence did not move while the
                // playout point did), or jumped: play on from here.
                self.frames.clear();
                self.next = Some(extended);
                self.highest = None;
            } else if extended < next {
                self.stats.late += 1;
                if self.delay_ms() < DELAY_MAX_MS {
                    self.hold = self.hold.saturating_add(1).min(2);
                }
                return;
            }
        }
        if self.frames.contains_key(&extended) {
            self.stats.duplicates += 1;
            return;
        }
        self.frames.insert(extended, payload);
        while self.frames.len() > FRAMES_HELD_MAX {
            self.frames.pop_first();
        }
        if self.highest.is_none_or(|highest| extended > highest) {
            self.highest = Some(extended);
            self.highest_arrival = Some(arrived);
        }
        self.first_arrival.get_or_insert(arrived);
    }

    /// The delay aimed at now, a whole number of frames.
    pub fn target_ms(&self) -> u32 {
        let wanted = (JITTER_FACTOR * self.jitter_ms).clamp(f64::from(DELAY_MIN_MS), f64::from(DELAY_MAX_MS));
        (wanted / f64::from(FRAME_MS)).ceil() as u32 * FRAME_MS
    }

    /// The audio held now: from the playout point to the newest packet.
    pub fn delay_ms(&self) -> u32 {
        match (self.next, self.highest) {
            (Some(next), Some(highest)) if highest >= next => {
                u32::try_from((highest - next + 1).saturating_mul(u64::from(FRAME_MS))).unwrap_or(u32::MAX)
            }
            _ => 0,
        }
    }

    /// The RFC 3550 interarrival jitter, in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// One tick of the playout clock: the frame to play now, or `None`
    /// before playout starts.
    pub fn tick(&mut self, now: Instant) -> Option<Playout> {
        let next = match self.next {
            Some(next) => next,
            None => {
                let first = self.first_arrival?;
                if now.saturating_duration_since(first) < Duration::from_millis(u64::from(self.target_ms())) {
                    return None;
                }
                let start = *self.frames.keys().next()?;
                self.next = Some(start);
                start
            }
        };
        let target = u64::from(self.target_ms() / FRAME_MS);
        let trails = self.trails(now, next);
        if self.hold > 0 && (trails < target || !self.frames.contains_key(&next)) {
            self.hold -= 1;
            self.stats.concealed += 1;
            return Some(Playout::Conceal);
        }
        self.hold = 0;
        let next = self.keep_delay(next, trails, target);
        if let Some(payload) = self.frames.remove(&next) {
            self.next = Some(next + 1);
            self.stats.played += 1;
            return Some(Playout::Decode(payload));
        }
        if let Some(&newer) = self.frames.keys().next()
            && (newer == next + 1 && trails >= target || newer > next + target + 2)
        {
            // Lost, and the next packet is here: its FEC carries this frame.
            // Far behind what arrives (a long burst was lost), the same
            // from the frame before the oldest that is here.
            self.stats.recovered += 1;
            self.next = Some(newer);
            return self.frames.get(&newer).map(|payload| Playout::Recover(payload.clone()));
        }
        // Concealed; not overdue yet, it may only be late, and is waited for.
        self.stats.concealed += 1;
        if trails >= target {
            self.next = Some(next + 1);
        }
        Some(Playout::Conceal)
    }

    /// How many frames the sender is ahead of the playout point now: from
    /// the newest packet, and the frames it has sent since by the clock.
    fn trails(&self, now: Instant, next: u64) -> u64 {
        let (Some(highest), Some(at)) = (self.highest, self.highest_arrival) else { return 0 };
        let since = now.saturating_duration_since(at).as_millis() as u64 / u64::from(FRAME_MS);
        (highest + since).saturating_sub(next)
    }

    /// Drops a frame when the playout point has trailed by two frames or
    /// more past the target for a while; the frame to play now.
    fn keep_delay(&mut self, next: u64, trails: u64, target: u64) -> u64 {
        if trails > target + 2 && self.frames.contains_key(&(next + 1)) {
            self.excess_ticks += 1;
            if self.excess_ticks >= EXCESS_TICKS {
                self.excess_ticks = 0;
                if self.frames.remove(&next).is_some() {
                    self.stats.dropped += 1;
                }
                self.next = Some(next + 1);
                return next + 1;
            }
        } else {
            self.excess_ticks = 0;
        }
        next
    }
}

/// `a - b` in milliseconds, negative when `a` is earlier.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(after) => after.as_secs_f64() * 1_000.0,
        None => -(b.duration_since(a).as_secs_f64() * 1_000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One packet of a scripted schedule: its sequence number and when it
    /// arrives, in milliseconds from the start (`None`: lost).
    #[derive(Clone, Copy)]
    struct Arrival {
        sequence: u64,
        at_ms: Option<f64>,
    }

    /// What each tick played: `Ok(sequence)` decoded or recovered, `Err(())`
    /// concealed.
    #[derive(Debug, Default)]
    struct Heard {
        played: Vec<u64>,
        recovered: Vec<u64>,
        concealed: usize,
        max_delay_ms: u32,
        stats: JitterStats,
    }

    fn payload(sequence: u64) -> Vec<u8> {
        sequence.to_be_bytes().to_vec()
    }

    fn sequence_of(payload: &[u8]) -> u64 {
        u64::from_be_bytes(payload.try_into().unwrap())
    }

    /// Runs the schedule through a buffer ticked every 20 ms (the receiver's
    /// clock, 7 ms out of phase with the sender's) until `ticks` ticks.
    fn play(arrivals: &[Arrival], ticks: usize, sender_ms_per_frame: f64) -> Heard {
        let start = Instant::now();
        let at = |ms: f64| start + Duration::from_micros((ms * 1_000.0) as u64);
        let mut pending: Vec<Arrival> = arrivals.iter().copied().filter(|a| a.at_ms.is_some()).collect();
        pending.sort_by(|a, b| a.at_ms.partial_cmp(&b.at_ms).unwrap());
        let mut pending = pending.into_iter().peekable();
        let mut buffer = JitterBuffer::new();
        let mut heard = Heard::default();
        for tick in 0..ticks {
            if pending.peek().is_none() && buffer.frames.is_empty() {
                break;
            }
            let now_ms = 7.0 + 20.0 * tick as f64;
            while let Some(arrival) = pending.next_if(|a| a.at_ms.unwrap() <= now_ms) {
                let timestamp = (arrival.sequence as f64 * sender_ms_per_frame * UNITS_PER_MS) as u32;
                buffer.push(arrival.sequence as u16, timestamp, payload(arrival.sequence), at(arrival.at_ms.unwrap()));
            }
            match buffer.tick(at(now_ms)) {
                Some(Playout::Decode(bytes)) => heard.played.push(sequence_of(&bytes)),
                Some(Playout::Recover(bytes)) => heard.recovered.push(sequence_of(&bytes) - 1),
                Some(Playout::Conceal) => heard.concealed += 1,
                None => {}
            }
            heard.max_delay_ms = heard.max_delay_ms.max(buffer.delay_ms());
        }
        heard.stats = buffer.stats();
        heard
    }

    /// A small deterministic generator, so that every run plays the same.
    struct Lcg(u64);

    impl Lcg {
        fn unit(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn steady(count: u64, ms_per_frame: f64) -> Vec<Arrival> {
        (0..count).map(|sequence| Arrival { sequence, at_ms: Some(sequence as f64 * ms_per_frame + 2.0) }).collect()
    }

    /// Everything heard, in order, each frame once.
    fn assert_in_order(heard: &Heard) {
        let mut all: Vec<u64> = heard.played.iter().chain(&heard.recovered).copied().collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count, "a frame was played twice");
        assert!(heard.played.windows(2).all(|pair| pair[0] < pair[1]), "played out of order");
    }

    #[test]
    fn a_steady_stream_plays_every_frame_at_the_least_delay() {
        let heard = play(&steady(500, 20.0), 520, 20.0);
        assert_eq!(heard.played, (0..500).collect::<Vec<_>>());
        assert_eq!((heard.stats.concealed, heard.stats.late, heard.stats.dropped), (0, 0, 0), "{heard:?}");
        assert!(heard.max_delay_ms <= 2 * DELAY_MIN_MS, "{}", heard.max_delay_ms);
    }

    #[test]
    fn forty_ms_of_jitter_raises_the_delay_and_almost_nothing_is_late() {
        let mut random = Lcg(7);
        let arrivals: Vec<Arrival> = (0..3_000)
            .map(|sequence| Arrival {
                sequence,
                at_ms: Some(sequence as f64 * 20.0 + 40.0 + (random.unit() * 80.0 - 40.0)),
            })
            .collect();
        let heard = play(&arrivals, 3_050, 20.0);
        assert_in_order(&heard);
        // The first second teaches the buffer the path's jitter.
        let late_after_warm_up = heard.stats.late.saturating_sub(25);
        assert!(late_after_warm_up <= 30, "late: {:?}", heard.stats);
        assert!(heard.played.len() >= 2_900, "played {} of 3000: {:?}", heard.played.len(), heard.stats);
        assert!(heard.max_delay_ms <= DELAY_MAX_MS + 2 * FRAME_MS, "{}", heard.max_delay_ms);
        assert!(heard.max_delay_ms >= 60, "the delay never grew: {}", heard.max_delay_ms);
    }

    #[test]
    fn reordered_packets_play_in_order() {
        // Each odd packet overtakes the even one before it by 5 ms.
        let arrivals: Vec<Arrival> = (0..400u64)
            .map(|sequence| {
                let base = sequence as f64 * 20.0 + 2.0;
                Arrival { sequence, at_ms: Some(if sequence % 2 == 0 { base + 25.0 } else { base }) }
            })
            .collect();
        let heard = play(&arrivals, 430, 20.0);
        assert_eq!(heard.played, (0..400).collect::<Vec<_>>(), "{:?}", heard.stats);
        assert_eq!((heard.stats.late, heard.stats.dropped), (0, 0));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut arrivals = steady(300, 20.0);
        arrivals.extend(steady(300, 20.0).into_iter().map(|a| Arrival { at_ms: a.at_ms.map(|ms| ms + 3.0), ..a }));
        let heard = play(&arrivals, 320, 20.0);
        assert_eq!(heard.played, (0..300).collect::<Vec<_>>());
        assert!(heard.stats.duplicates + heard.stats.late >= 299, "{:?}", heard.stats);
    }

    #[test]
    fn bursty_loss_is_recovered_from_fec_where_it_can_and_concealed_elsewhere() {
        // Gilbert-Elliott: a burst starts with 8 % and goes on with 60 %,
        // about 20 % lost in all, in bursts of one to a few.
        let mut random = Lcg(11);
        let mut losing = false;
        let arrivals: Vec<Arrival> = (0..3_000u64)
            .map(|sequence| {
                losing = random.unit() < if losing { 0.6 } else { 0.08 };
                Arrival { sequence, at_ms: (!losing).then_some(sequence as f64 * 20.0 + 2.0) }
            })
            .collect();
        let lost: Vec<u64> = arrivals.iter().filter(|a| a.at_ms.is_none()).map(|a| a.sequence).collect();
        assert!((450..=750).contains(&lost.len()), "{} lost", lost.len());
        let heard = play(&arrivals, 3_010, 20.0);
        assert_in_order(&heard);
        // A lost frame right before a received one comes back from FEC.
        for sequence in &heard.recovered {
            assert!(lost.contains(sequence));
            assert!(!lost.contains(&(sequence + 1)));
        }
        let recoverable = lost.iter().filter(|s| !lost.contains(&(*s + 1)) && **s + 1 < 3_000).count();
        assert!(heard.recovered.len() + 5 >= recoverable, "{} of {recoverable}", heard.recovered.len());
        // Every received frame plays, none is dropped: loss alone never
        // grows the delay. The rest of the lost frames are concealed.
        assert_eq!(heard.played.len() as u64 + lost.len() as u64, 3_000, "{:?}", heard.stats);
        assert_eq!((heard.stats.dropped, heard.stats.late), (0, 0), "{:?}", heard.stats);
        let unrecovered = lost.len() - heard.recovered.len();
        assert!((unrecovered - 5..=unrecovered).contains(&heard.concealed), "{unrecovered}: {:?}", heard.stats);
        assert!(heard.max_delay_ms <= 2 * DELAY_MIN_MS, "{}", heard.max_delay_ms);
    }

    #[test]
    fn a_sender_clock_200_ppm_off_keeps_the_delay_bounded() {
        // Ten minutes of audio from a sender whose clock runs fast, then slow.
        for ms_per_frame in [20.0 * (1.0 - 200e-6), 20.0 * (1.0 + 200e-6)] {
            let heard = play(&steady(30_000, ms_per_frame), 30_010, ms_per_frame);
            assert_in_order(&heard);
            assert!(heard.max_delay_ms <= 3 * FRAME_MS + DELAY_MIN_MS, "{}: {:?}", heard.max_delay_ms, heard.stats);
            // 200 ppm of 30,000 frames is 6: a frame dropped or concealed
            // now and then, and nothing else.
            let adjusted = heard.stats.dropped + heard.stats.concealed;
            assert!((1..=12).contains(&adjusted), "{ms_per_frame}: {:?}", heard.stats);
            assert_eq!(heard.stats.late, 0, "{:?}", heard.stats);
        }
    }

    #[test]
    fn a_far_jump_restarts_the_stream_and_sequence_numbers_wrap() {
        let mut buffer = JitterBuffer::new();
        let start = Instant::now();
        let ms = |n: u64| start + Duration::from_millis(n);
        for (i, sequence) in [65_534u16, 65_535, 0, 1].into_iter().enumerate() {
            buffer.push(sequence, i as u32 * 960, vec![i as u8], ms(i as u64 * 20));
        }
        let mut played = Vec::new();
        for tick in 0..6 {
            if let Some(Playout::Decode(bytes)) = buffer.tick(ms(30 + tick * 20)) {
                played.push(bytes[0]);
            }
        }
        assert_eq!(played, vec![0, 1, 2, 3]);
        // The sender comes back 5,000 frames on: played from there.
        buffer.push(5_000, 5_000 * 960, vec![9], ms(200));
        assert_eq!(buffer.tick(ms(210)), Some(Playout::Decode(vec![9])));
        assert_eq!(buffer.stats().late, 0);
    }
}
