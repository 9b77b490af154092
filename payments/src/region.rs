//! Supported regions and their rules: currency, local time zone, limits per
//! transfer, per local day and per local month, an optional night-time limit
//! (Brazil's Pix rule) and the fee rule (Russia's Faster Payments System).

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::money::Currency;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum RegionCode {
    #[serde(rename = "RU")]
    Ru,
    #[serde(rename = "BR")]
    Br,
}

impl RegionCode {
    pub const ALL: [RegionCode; 2] = [RegionCode::Ru, RegionCode::Br];

    /// ISO 3166-1 alpha-2 to a supported region; `None` for any other.
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "RU" => Some(RegionCode::Ru),
            "BR" => Some(RegionCode::Br),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegionCode::Ru => "RU",
            RegionCode::Br => "BR",
        }
    }
}

/// How the fee for a P2P transfer is computed. The sender pays it on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeeRule {
    None,
    /// Free while the sender's P2P total this local month stays within
    /// `free_monthly_minor`; then `rate_bp` basis points of the part above,
    /// at most `cap_minor` per transfer (RU Faster Payments System).
    FreeMonthlyThenRate {
        free_monthly_minor: i64,
        rate_bp: i64,
        cap_minor: i64,
    },
}

impl FeeRule {
    /// The fee for sending `amount_minor` when `month_total_minor` was already
    /// sent this month. Basis-point fractions round half up to the minor unit.
    pub fn fee_minor(self, month_total_minor: i64, amount_minor: i64) -> i64 {
        match self {
            FeeRule::None => 0,
            FeeRule::FreeMonthlyThenRate { free_monthly_minor, rate_bp, cap_minor } => {
                let after = month_total_minor.saturating_add(amount_minor);
                let charged = after - month_total_minor.max(free_monthly_minor);
                if charged <= 0 {
                    return 0;
                }
                let fee = (i128::from(charged) * i128::from(rate_bp) + 5_000) / 10_000;
                i64::try_from(fee).unwrap_or(i64::MAX).min(cap_minor)
            }
        }
    }
}

/// The rules of one region, as operators have set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionRules {
    pub code: RegionCode,
    pub enabled: bool,
    pub currency: Currency,
    pub time_zone: String,
    pub per_transfer_max_minor: i64,
    pub daily_max_minor: i64,
    pub monthly_max_minor: i64,
    /// At most this much in total between `night_start_hour` and
    /// `night_end_hour` local time.
    pub night_max_minor: Option<i64>,
    pub night_start_hour: i8,
    pub night_end_hour: i8,
    pub fee: FeeRule,
}

/// A change to a region's rules: each field that is set replaces the rule
/// (`night_max_minor: Some(None)` removes the night limit). The ledger's
/// writer applies it to the rules in force when its turn comes, so that two
/// admins changing different rules at once both have their way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesChange {
    pub enabled: Option<bool>,
    pub per_transfer_max_minor: Option<i64>,
    pub daily_max_minor: Option<i64>,
    pub monthly_max_minor: Option<i64>,
    pub night_max_minor: Option<Option<i64>>,
    pub night_start_hour: Option<i8>,
    pub night_end_hour: Option<i8>,
    pub fee: Option<FeeRule>,
}

impl RulesChange {
    /// `rules` with this change made (not validated).
    pub fn apply(&self, rules: &RegionRules) -> RegionRules {
        let mut changed = rules.clone();
        changed.enabled = self.enabled.unwrap_or(rules.enabled);
        changed.per_transfer_max_minor = self.per_transfer_max_minor.unwrap_or(rules.per_transfer_max_minor);
        changed.daily_max_minor = self.daily_max_minor.unwrap_or(rules.daily_max_minor);
        changed.monthly_max_minor = self.monthly_max_minor.unwrap_or(rules.monthly_max_minor);
        changed.night_max_minor = self.night_max_minor.unwrap_or(rules.night_max_minor);
        changed.night_start_hour = self.night_start_hour.unwrap_or(rules.night_start_hour);
        changed.night_end_hour = self.night_end_hour.unwrap_or(rules.night_end_hour);
        changed.fee = self.fee.unwrap_or(rules.fee);
        changed
    }
}

/// The local-time windows a moment falls in, as UTC millisecond starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub day_start_ms: i64,
    pub month_start_ms: i64,
    /// The start of the night this moment is in, if it is night.
    pub night_start_ms: Option<i64>,
}

/// What makes a region's rules unusable: each names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRules(pub String);

/// The highest fee rate operators may set: 5 % (500 basis points).
pub const FEE_RATE_BP_MAX: i64 = 500;

impl RegionRules {
    /// Whether these rules can be applied: every limit positive and within
    /// what an amount can be, per transfer ≤ daily ≤ monthly, a night limit
    /// within the daily one and a night window of some length, a fee rate
    /// within [0, 5 %] and no negative fee amount.
    pub fn validate(&self) -> Result<(), InvalidRules> {
        let max = crate::money::AMOUNT_MAJOR_MAX.saturating_mul(100);
        let limit = |name: &str, value: i64| {
            if value <= 0 || value > max {
                Err(InvalidRules(format!("{name} must be more than zero and at most 1,000,000,000,000")))
            } else {
                Ok(())
            }
        };
        limit("per_transfer_max", self.per_transfer_max_minor)?;
        limit("daily_max", self.daily_max_minor)?;
        limit("monthly_max", self.monthly_max_minor)?;
        if self.per_transfer_max_minor > self.daily_max_minor {
            return Err(InvalidRules("per_transfer_max must not be more than daily_max".into()));
        }
        if self.daily_max_minor > self.monthly_max_minor {
            return Err(InvalidRules("daily_max must not be more than monthly_max".into()));
        }
        if let Some(night) = self.night_max_minor {
            limit("night_max", night)?;
            if night > self.daily_max_minor {
                return Err(InvalidRules("night_max must not be more than daily_max".into()));
            }
        }
        for (name, hour) in [("night_start_hour", self.night_start_hour), ("night_end_hour", self.night_end_hour)] {
            if !(0..=23).contains(&hour) {
                return Err(InvalidRules(format!("{name} must be an hour from 0 to 23")));
            }
        }
        if self.night_start_hour == self.night_end_hour {
            return Err(InvalidRules("the night window must not start and end at the same hour".into()));
        }
        if let FeeRule::FreeMonthlyThenRate { free_monthly_minor, rate_bp, cap_minor } = self.fee {
            if !(0..=FEE_RATE_BP_MAX).contains(&rate_bp) {
                return Err(InvalidRules("the fee rate must be from 0 to 0.05 (5 %)".into()));
            }
            if !(0..=max).contains(&free_monthly_minor) || !(0..=max).contains(&cap_minor) {
                return Err(InvalidRules(
                    "the fee's free monthly amount and cap must be from zero to 1,000,000,000,000".into(),
                ));
            }
        }
        Ok(())
    }
}

impl RegionRules {
    /// The defaults drawn from the real rails (DESIGN.md).
    pub fn default_for(code: RegionCode) -> Self {
        match code {
            RegionCode::Ru => RegionRules {
                code,
                enabled: true,
                currency: Currency::Rub,
                time_zone: "Europe/Moscow".into(),
                per_transfer_max_minor: 100_000_00,
                daily_max_minor: 150_000_00,
                monthly_max_minor: 600_000_00,
                night_max_minor: None,
                night_start_hour: 20,
                night_end_hour: 6,
                fee: FeeRule::FreeMonthlyThenRate { free_monthly_minor: 100_000_00, rate_bp: 50, cap_minor: 1_500_00 },
            },
            RegionCode::Br => RegionRules {
                code,
                enabled: true,
                currency: Currency::Brl,
                time_zone: "America/Sao_Paulo".into(),
                per_transfer_max_minor: 5_000_00,
                daily_max_minor: 10_000_00,
                monthly_max_minor: 50_000_00,
                night_max_minor: Some(1_000_00),
                night_start_hour: 20,
                night_end_hour: 6,
                fee: FeeRule::None,
            },
        }
    }

    /// The region's time zone (its local days and months).
    pub fn zone(&self) -> TimeZone {
        // Zones are validated when rules are stored; UTC is a safe fallback.
        TimeZone::get(&self.time_zone).unwrap_or(TimeZone::UTC)
    }

    /// The local day, month and night windows `at_ms` falls in.
    pub fn windows(&self, at_ms: i64) -> Windows {
        let at = Timestamp::from_millisecond(at_ms).unwrap_or(Timestamp::UNIX_EPOCH).to_zoned(self.zone());
        let day_start = at.start_of_day().unwrap_or_else(|_| at.clone());
        let month_start = at.first_of_month().and_then(|z| z.start_of_day()).unwrap_or_else(|_| day_start.clone());
        let hour = at.hour();
        let (start, end) = (self.night_start_hour, self.night_end_hour);
        let night_start = if self.night_max_minor.is_none() || start == end {
            None
        } else if start > end {
            // The night wraps midnight: it began today, or it began yesterday.
            if hour >= start {
                at_hour(&day_start, start)
            } else if hour < end {
                day_start.checked_sub(1.day()).ok().and_then(|yesterday| at_hour(&yesterday, start))
            } else {
                None
            }
        } else if (start..end).contains(&hour) {
            at_hour(&day_start, start)
        } else {
            None
        };
        Windows {
            day_start_ms: day_start.timestamp().as_millisecond(),
            month_start_ms: month_start.timestamp().as_millisecond(),
            night_start_ms: night_start.map(|z| z.timestamp().as_millisecond()),
        }
    }
}

fn at_hour(day: &Zoned, hour: i8) -> Option<Zoned> {
    day.with().time(Time::new(hour, 0, 0, 0).ok()?).build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn ru_fee_is_free_to_100k_a_month_then_half_a_percent_capped() {
        let fee = RegionRules::default_for(RegionCode::Ru).fee;
        assert_eq!(fee.fee_minor(0, 100_000_00), 0, "exactly at the free allowance");
        assert_eq!(fee.fee_minor(0, 100_000_01), 0, "0.5 % of 0.01 rounds to 0.00");
        assert_eq!(fee.fee_minor(90_000_00, 20_000_00), 50_00, "0.5 % of the 10,000 above");
        assert_eq!(fee.fee_minor(150_000_00, 10_000_00), 50_00, "all of it above");
        assert_eq!(fee.fee_minor(150_000_00, 100_000_00), 500_00);
        assert_eq!(fee.fee_minor(500_000_00, 1_000_000_00), 1_500_00, "capped");
        assert_eq!(fee.fee_minor(100_000_00, 1_00), 1, "0.5 % of 1.00 is 0.005: half up to 0.01");
        assert_eq!(RegionRules::default_for(RegionCode::Br).fee.fee_minor(0, 1_000_00), 0);
    }

    #[test]
    fn windows_follow_local_time() {
        let ru = RegionRules::default_for(RegionCode::Ru);
        // 2026-03-31 22:30 UTC is 2026-04-01 01:30 in Moscow (UTC+3).
        let w = ru.windows(ms("2026-03-31T22:30:00Z"));
        assert_eq!(w.day_start_ms, ms("2026-03-31T21:00:00Z"));
        assert_eq!(w.month_start_ms, ms("2026-03-31T21:00:00Z"));
        assert_eq!(w.night_start_ms, None, "RU has no night rule");
    }

    #[test]
    fn brazil_nights_run_from_20_to_06_local() {
        let br = RegionRules::default_for(RegionCode::Br);
        // São Paulo is UTC-3.
        assert_eq!(br.windows(ms("2026-06-10T22:59:00Z")).night_start_ms, None, "19:59 local");
        assert_eq!(br.windows(ms("2026-06-10T23:00:00Z")).night_start_ms, Some(ms("2026-06-10T23:00:00Z")), "20:00");
        assert_eq!(
            br.windows(ms("2026-06-11T08:59:00Z")).night_start_ms,
            Some(ms("2026-06-10T23:00:00Z")),
            "05:59 the next morning belongs to the same night"
        );
        assert_eq!(br.windows(ms("2026-06-11T09:00:00Z")).night_start_ms, None, "06:00");
    }

    #[test]
    fn a_night_window_that_does_not_wrap_midnight() {
        let mut rules = RegionRules::default_for(RegionCode::Br);
        rules.night_start_hour = 1;
        rules.night_end_hour = 5;
        assert_eq!(rules.windows(ms("2026-06-10T03:00:00Z")).night_start_ms, None, "00:00 local");
        assert_eq!(rules.windows(ms("2026-06-10T05:00:00Z")).night_start_ms, Some(ms("2026-06-10T04:00:00Z")), "02:00");
        assert_eq!(rules.windows(ms("2026-06-10T08:00:00Z")).night_start_ms, None, "05:00");
        rules.night_end_hour = 1;
        assert_eq!(rules.windows(ms("2026-06-10T05:00:00Z")).night_start_ms, None, "start = end: no night");
    }

    #[test]
    fn region_codes() {
        assert_eq!(RegionCode::parse("RU"), Some(RegionCode::Ru));
        assert_eq!(RegionCode::parse("DE"), None);
        assert_eq!(RegionCode::parse("ru"), None);
    }
}
