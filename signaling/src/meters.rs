//! Metric handles used on every message, looked up once (after the
//! recorder is installed: the first message comes after start-up).

pub struct Meters {
    pub messages: metrics::Counter,
    pub calls_in_progress: metrics::Gauge,
}

pub fn meters() -> &'static Meters {
    static METERS: std::sync::LazyLock<Meters> = std::sync::LazyLock::new(|| Meters {
        messages: metrics::counter!("signaling_messages_total"),
        calls_in_progress: metrics::gauge!("signaling_calls_in_progress"),
    });
    &METERS
}
