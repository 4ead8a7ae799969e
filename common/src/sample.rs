//! Synthetic events for `lambdaflow gen`, the demo, benchmarks and tests, in the shapes of the
//! demo's two sources ([`Shape`]):
//! - the shop's page views, clicks and purchases by a few thousand users in a handful of
//!   countries, about 200 bytes each, times as RFC 3339 text;
//! - a web tracker's page hits (path, referrer, device, load time) by sessions of those users,
//!   with their own id and time fields, times as epoch milliseconds.
//!
//! Either comes with optional fractions of duplicates (an earlier event sent again), late events
//! (hours to days old) and invalid events (one of each reason code in turn).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::timestamp::format_micros;

/// What kind of message [`Generator::next_event`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new valid event.
    Valid,
    /// A copy of an earlier valid event.
    Duplicate,
    /// A valid event whose time is hours to days in the past.
    Late,
    /// An event that must be quarantined.
    Invalid,
}

/// One generated message.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Kafka key: the event id, so that copies of an event share a partition.
    pub key: String,
    /// The JSON payload.
    pub payload: Vec<u8>,
    /// What it is.
    pub kind: Kind,
}

/// Fractions of the generated messages that are duplicates, late or invalid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    /// Fraction sent again.
    pub duplicates: f64,
    /// Fraction with an old event time.
    pub late: f64,
    /// Fraction that is invalid.
    pub invalid: f64,
}

const COUNTRIES: [&str; 8] = ["US", "KR", "DE", "GB", "FR", "JP", "BR", "IN"];
const COUNTRY_WEIGHTS: [u32; 8] = [30, 15, 12, 10, 9, 9, 8, 7];
const SHOP_INVALID: [&str; 7] = [
    "{\"event_id\": broken",
    "[\"not\", \"an\", \"object\"]",
    "{\"event_time\":\"2026-01-01T00:00:00Z\",\"type\":\"view\",\"user_id\":\"u1\",\"country\":\"us\"}",
    "{\"event_id\":\"x\",\"event_time\":\"last tuesday\",\"type\":\"view\",\"user_id\":\"u1\",\"country\":\"us\"}",
    "{\"event_id\":\"x\",\"event_time\":\"2999-01-01T00:00:00Z\",\"type\":\"view\",\"user_id\":\"u1\",\"country\":\"us\"}",
    "{\"event_id\":\"x\",\"event_time\":\"2026-01-01T00:00:00Z\",\"type\":\"purchase\",\"user_id\":\"u1\",\"country\":\"us\",\"amount\":\"ten\",\"email\":\"leak@example.com\"}",
    "{\"event_id\":\"x\",\"event_time\":\"2026-01-01T00:00:00Z\",\"type\":\"view\",\"user_id\":\"u1\"}",
];

const PATHS: [&str; 8] = [
    "/",
    "/search",
    "/cart",
    "/checkout",
    "/products",
    "/help",
    "/account",
    "/blog",
];
const PATH_WEIGHTS: [u32; 8] = [25, 15, 8, 4, 30, 5, 6, 7];
const REFERRERS: [&str; 4] = ["google.com", "news.example", "mail", "direct"];
const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];
const PAGES_INVALID: [&str; 7] = [
    "{\"hit_id\": broken",
    "\"a string\"",
    "{\"ts\":1767225600000,\"session_id\":\"s1\",\"path\":\"/\"}",
    "{\"hit_id\":\"x\",\"ts\":\"yesterday\",\"session_id\":\"s1\",\"path\":\"/\"}",
    "{\"hit_id\":\"x\",\"ts\":32503680000000,\"session_id\":\"s1\",\"path\":\"/\"}",
    "{\"hit_id\":\"x\",\"ts\":1767225600000,\"session_id\":\"s1\",\"path\":\"/\",\"load_ms\":\"fast\"}",
    "{\"hit_id\":\"x\",\"ts\":1767225600000,\"session_id\":\"s1\"}",
];

/// The shape of the generated events: which of the demo's sources they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The shop's events (the demo's `events` source).
    Shop,
    /// A web tracker's page hits (the demo's `pageviews` source).
    Pages,
}

impl Shape {
    /// The shape called `name` (`shop`, `pages`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "shop" => Some(Self::Shop),
            "pages" => Some(Self::Pages),
            _ => None,
        }
    }

    fn invalid(self) -> &'static [&'static str] {
        match self {
            Self::Shop => &SHOP_INVALID,
            Self::Pages => &PAGES_INVALID,
        }
    }
}

/// A deterministic stream of events of one shape for a given seed.
#[derive(Debug)]
pub struct Generator {
    shape: Shape,
    rng: SmallRng,
    mix: Mix,
    users: u32,
    recent: Vec<Sample>,
    invalid_turn: usize,
    counter: u64,
}

impl Generator {
    /// A generator of shop events by `users` users with the given mix.
    pub fn shop(seed: u64, users: u32, mix: Mix) -> Self {
        Self::new(Shape::Shop, seed, users, mix)
    }

    /// A generator of events of `shape` by `users` users with the given mix.
    pub fn new(shape: Shape, seed: u64, users: u32, mix: Mix) -> Self {
        Self {
            shape,
            rng: SmallRng::seed_from_u64(seed),
            mix,
            users: users.max(1),
            recent: Vec::new(),
            invalid_turn: 0,
            counter: 0,
        }
    }

    /// Changes the mix from the next message on.
    pub fn set_mix(&mut self, mix: Mix) {
        self.mix = mix;
    }

    /// The next message, as of wall-clock time `now_us`.
    pub fn next_event(&mut self, now_us: i64) -> Sample {
        let roll: f64 = self.rng.random();
        if roll < self.mix.invalid {
            let invalid = self.shape.invalid();
            let payload = invalid[self.invalid_turn % invalid.len()]
                .as_bytes()
                .to_vec();
            self.invalid_turn += 1;
            self.counter += 1;
            return Sample {
                key: format!("invalid-{}", self.counter),
                payload,
                kind: Kind::Invalid,
            };
        }
        if roll < self.mix.invalid + self.mix.duplicates && !self.recent.is_empty() {
            let i = self.rng.random_range(0..self.recent.len());
            let mut copy = self.recent[i].clone();
            copy.kind = Kind::Duplicate;
            return copy;
        }
        let late = roll < self.mix.invalid + self.mix.duplicates + self.mix.late;
        let time = if late {
            now_us - self.rng.random_range(3_600_000_000..3 * 86_400_000_000)
        } else {
            now_us
        };
        self.counter += 1;
        let payload = match self.shape {
            Shape::Shop => self.shop_event(time),
            Shape::Pages => self.page_hit(time),
        };
        let sample = Sample {
            payload,
            key: String::new(),
            kind: if late { Kind::Late } else { Kind::Valid },
        };
        let id = self.last_id();
        let sample = Sample { key: id, ..sample };
        if self.recent.len() < 1024 {
            self.recent.push(sample.clone());
        } else {
            let i = self.rng.random_range(0..self.recent.len());
            self.recent[i] = sample.clone();
        }
        sample
    }

    fn last_id(&self) -> String {
        format!(
            "{:016x}-{:08x}",
            self.counter,
            self.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
        )
    }

    fn page_hit(&mut self, time_us: i64) -> Vec<u8> {
        let id = self.last_id();
        let user = self.rng.random_range(1..=self.users);
        let session = user.wrapping_mul(31) ^ (self.counter / 50) as u32;
        let path = PATHS[weighted(&mut self.rng, &PATH_WEIGHTS)];
        let country = COUNTRIES[weighted(&mut self.rng, &COUNTRY_WEIGHTS)];
        let device = DEVICES[self.rng.random_range(0..DEVICES.len())];
        let referrer = REFERRERS[self.rng.random_range(0..REFERRERS.len())];
        let load_ms = self.rng.random_range(40..2_500);
        format!(
            "{{\"hit_id\":\"{id}\",\"ts\":{},\"session_id\":\"s{session:08x}\",\"path\":\"{path}\",\"referrer\":\"{referrer}\",\"device\":\"{device}\",\"country\":\"{country}\",\"load_ms\":{load_ms}}}",
            time_us.div_euclid(1000)
        )
        .into_bytes()
    }

    fn shop_event(&mut self, time_us: i64) -> Vec<u8> {
        let id = self.last_id();
        let user = self.rng.random_range(1..=self.users);
        let country = COUNTRIES[weighted(&mut self.rng, &COUNTRY_WEIGHTS)];
        let kind = match self.rng.random_range(0..100) {
            0..70 => "view",
            70..90 => "click",
            _ => "purchase",
        };
        let product = self.rng.random_range(1..=50);
        let time = format_micros(time_us - time_us.rem_euclid(1000));
        let mut json = format!(
            "{{\"event_id\":\"{id}\",\"event_time\":\"{time}\",\"type\":\"{kind}\",\"user_id\":\"u{user:05}\",\"country\":\"{country}\",\"product\":\"p{product:02}\""
        );
        if kind == "purchase" {
            let quantity = self.rng.random_range(1..=4);
            let cents = self.rng.random_range(199..=49_999) * quantity;
            json.push_str(&format!(
                ",\"quantity\":{quantity},\"amount\":{}.{:02},\"email\":\"user{user}@example.com\"",
                cents / 100,
                cents % 100
            ));
        } else {
            json.push_str(",\"session\":\"s");
            json.push_str(&format!("{:x}", self.rng.random::<u32>()));
            json.push('"');
        }
        json.push('}');
        json.into_bytes()
    }
}

fn weighted(rng: &mut SmallRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut pick = rng.random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if pick < *w {
            return i;
        }
        pick -= w;
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::timestamp::now_micros;
    use crate::validate::Validator;

    #[test]
    fn kinds_validate_as_they_claim_in_either_shape() {
        let demo = Config::demo();
        for (shape, source) in [(Shape::Shop, "events"), (Shape::Pages, "pageviews")] {
            kinds_validate_as_they_claim(shape, demo.source_named(source).unwrap());
        }
    }

    fn kinds_validate_as_they_claim(shape: Shape, source: &crate::source::SourceConfig) {
        let validator = Validator::new(source);
        let mix = Mix {
            duplicates: 0.1,
            late: 0.1,
            invalid: 0.1,
        };
        let mut generator = Generator::new(shape, 7, 100, mix);
        let mut invalid = std::collections::HashSet::new();
        let now = now_micros();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let s = generator.next_event(now);
            let checked = validator.check(Some(&s.payload), now);
            match s.kind {
                Kind::Invalid => {
                    let reason = checked.expect_err(&String::from_utf8_lossy(&s.payload));
                    invalid.insert(reason.to_string());
                }
                Kind::Duplicate => assert!(!seen.insert(checked.unwrap().id.into_owned())),
                Kind::Valid | Kind::Late => {
                    let c = checked.unwrap();
                    assert_eq!(c.id, s.key);
                    assert!(seen.insert(c.id.into_owned()));
                }
            }
        }
        assert_eq!(
            invalid.len(),
            shape.invalid().len(),
            "{shape:?}: {invalid:?}"
        );
    }

    #[test]
    fn events_are_about_two_hundred_bytes() {
        let mut generator = Generator::shop(1, 3000, Mix::default());
        let total: usize = (0..1000)
            .map(|_| generator.next_event(now_micros()).payload.len())
            .sum();
        assert!((150..260).contains(&(total / 1000)), "{}", total / 1000);
    }
}
