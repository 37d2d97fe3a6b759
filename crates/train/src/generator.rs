//! The demo dataset generator: deterministic for a seed, realistic enough that a
//! good model can learn the outcomes and a bad one cannot.
//!
//! # Generative process
//!
//! Every user has hidden traits; the app only sees what a real app would (the
//! profile, and behaviour sampled from the traits with noise):
//!
//! * **Taste**: 3–7 core interests (uniform over the tags) weigh `1 + exp(N(0, ¼²))`,
//!   every other tag `0.1·exp(N(0, ¼²))`. Declared interests are each core interest
//!   with probability 0.95 (at least one), plus, 10 % of the time, one non-core tag:
//!   a noisy view of the taste, which behaviour (interactions) reveals further.
//! * **Style**: pace, comfort and spontaneity in 0..1 (Beta draws, mixed by
//!   [`GeneratorConfig::style_mix`]); the profile's `travel_style` is the nearest
//!   of six prototypes. Budget follows comfort, with noise.
//! * **Personality**: Big Five traits, each Beta(2, 2) by default
//!   ([`GeneratorConfig::personality_mix`]).
//! * **Rhythm**: a time zone (weighted list of 16), a main and a second peak hour
//!   of app use in local time, a weekend shift and level, and a daily rate
//!   (log-normal, so many users have little history).
//! * **Channel habits**: an open propensity per channel (push, email, sms).
//!
//! Outcomes follow from the traits plus noise:
//!
//! * **Activity**: each day a Poisson number of sessions at the user's rate (times
//!   the weekend level), each at an hour drawn from the user's local profile.
//! * **Interactions**: destinations are viewed with probability ∝
//!   `exp(1.2·utility)`, `utility = 2.2·taste·tags + 0.6·popularity − 0.9·|budget − cost| +
//!   0.4·[preferred length offered] + Gumbel noise`; views convert to saves,
//!   saves to bookings, bookings to visits and visits to ratings with logistic
//!   probabilities of the same utility.
//! * **Matches**: pairs are proposed (half within the same time zone), with a
//!   context destination (and, half the time, one or two of its tags the trip is
//!   about, which then replace the destination's tags as the context), and match
//!   with probability
//!
//!   ```text
//!   P = σ(−0.2 + 4.8·(cos(taste_a, taste_b) − 0.6) + 3.6·(0.5 − style distance)
//!         − 2.2·|Δconscientiousness| − 1.0·|Δopenness|
//!         + 1.2·(mean agreeableness − 0.5) − 0.8·(mean neuroticism − 0.5)
//!         + 0.6·shared language − 0.5·|Δbudget|
//!         + 3.2·(mean context taste − 0.5) − 0.02·|Δage|)
//!   ```
//!
//!   stored as `true_probability`; the outcome is a Bernoulli draw.
//! * **Notifications**: sent at uniform times on channels drawn 60/30/10 %;
//!   opened with probability `propensity(channel) · (0.15 + 0.85 · activity at
//!   that local hour / peak activity)`.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Offset, TimeZone, Timelike, Utc};
use ml_core::catalogue;
use ml_core::types::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution, Gumbel, LogNormal, Normal, Poisson, WeightedIndex};
use uuid::Uuid;

/// Time zones users live in, with their main language and a weight.
pub const TIMEZONES: [(&str, &str, f32); 16] = [
    ("Europe/London", "en", 8.0),
    ("Europe/Paris", "fr", 6.0),
    ("Europe/Berlin", "de", 6.0),
    ("Europe/Madrid", "es", 5.0),
    ("Europe/Rome", "it", 4.0),
    ("Europe/Amsterdam", "nl", 2.0),
    ("America/New_York", "en", 9.0),
    ("America/Chicago", "en", 4.0),
    ("America/Los_Angeles", "en", 6.0),
    ("America/Sao_Paulo", "pt", 4.0),
    ("America/Mexico_City", "es", 3.0),
    ("Asia/Tokyo", "ja", 4.0),
    ("Asia/Seoul", "ko", 2.0),
    ("Asia/Singapore", "en", 2.0),
    ("Asia/Kolkata", "hi", 3.0),
    ("Australia/Sydney", "en", 4.0),
];

const STYLE_PROTOTYPES: [(TravelStyle, [f32; 3]); 6] = [
    (TravelStyle::Backpacker, [0.7, 0.1, 0.8]),
    (TravelStyle::Adventurer, [0.9, 0.4, 0.6]),
    (TravelStyle::Cultural, [0.4, 0.5, 0.2]),
    (TravelStyle::Comfort, [0.4, 0.7, 0.3]),
    (TravelStyle::Luxury, [0.3, 0.95, 0.4]),
    (TravelStyle::Relaxer, [0.1, 0.6, 0.5]),
];

/// Settings of one generated dataset.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub users: usize,
    pub seed: u64,
    /// First instant of the data window.
    pub start: DateTime<Utc>,
    /// Length of the data window in days.
    pub days: u32,
    /// Mean number of pairings proposed per user.
    pub matches_per_user: f64,
    /// Mean number of destinations a user views over the window.
    pub views_per_user: f64,
    /// Mean number of notifications sent to a user over the window.
    pub notifications_per_user: f64,
    /// Beta parameters (a, b) of pace, comfort and spontaneity: changing them
    /// changes the mix of travel styles.
    pub style_mix: [(f64, f64); 3],
    /// Beta parameters (a, b) of each Big Five trait: the mix of personalities.
    pub personality_mix: (f64, f64),
    /// Share of interests (declared and trips') written as a synonymous
    /// phrase ("trekking" for hiking, "street food" for food) instead of the
    /// tag's name, as people type them in free text. 0 by default; the
    /// semantic-interest evaluation uses 0.5. Drawn from a separate random
    /// stream, so the rest of the dataset does not change with it.
    pub synonym_rate: f64,
    /// Mean number of free-text hobbies per user that are not among the
    /// catalogue's tags ("surfing", "opera", …; [`HOBBIES`], with a Zipf
    /// popularity). Two users who share one are likelier to match, the more
    /// so the rarer it is. 0 by default (none). Drawn from a separate random
    /// stream.
    pub hobbies_per_user: f64,
    /// Compatibility that is not additive in the features: a large budget
    /// gap hurts where a small one does not, travel styles far apart hurt
    /// more than linearly, and some traits matter only when both users have
    /// them (two extraverts, two anxious travellers). Off by default.
    pub nonadditive: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            users: 5_000,
            seed: 42,
            start: Utc.with_ymd_and_hms(2026, 7, 4, 0, 0, 0).unwrap(),
            days: 120,
            matches_per_user: 10.0,
            views_per_user: 30.0,
            notifications_per_user: 25.0,
            style_mix: [(2.0, 2.0), (2.0, 2.0), (2.0, 2.0)],
            personality_mix: (2.0, 2.0),
            synonym_rate: 0.0,
            hobbies_per_user: 0.0,
            nonadditive: false,
        }
    }
}

impl GeneratorConfig {
    /// The settings the match model's robustness is reported on: the default, a
    /// different seed with other mixes of travel styles and personalities, and
    /// ten times the users (`scale` shrinks the user counts for quick runs).
    pub fn robustness_settings(scale: f64) -> Vec<(String, GeneratorConfig)> {
        let users = |n: f64| ((n * scale) as usize).max(200);
        vec![
            (
                "default (seed 42)".into(),
                GeneratorConfig {
                    users: users(5_000.0),
                    seed: 42,
                    ..Default::default()
                },
            ),
            (
                "seed 7, fast-paced budget travellers, extravert-leaning personalities".into(),
                GeneratorConfig {
                    users: users(5_000.0),
                    seed: 7,
                    style_mix: [(5.0, 2.0), (2.0, 5.0), (1.0, 1.0)],
                    personality_mix: (4.0, 2.0),
                    ..Default::default()
                },
            ),
            (
                "seed 11, 10x users".into(),
                GeneratorConfig {
                    users: users(50_000.0),
                    seed: 11,
                    ..Default::default()
                },
            ),
            (
                "seed 13, free-text hobbies, non-additive compatibility".into(),
                GeneratorConfig::free_text(users(5_000.0), 13),
            ),
        ]
    }

    /// Free text beyond the tags and compatibility that is not additive:
    /// three hobbies per user on average, half the interests written as
    /// synonyms, [`GeneratorConfig::nonadditive`] on.
    pub fn free_text(users: usize, seed: u64) -> GeneratorConfig {
        GeneratorConfig {
            users,
            seed,
            hobbies_per_user: 3.0,
            nonadditive: true,
            ..Default::default()
        }
    }

    pub fn end(&self) -> DateTime<Utc> {
        self.start + Duration::days(self.days as i64)
    }
}

/// A user's true daily rhythm and channel habits (demo data only): the ground
/// truth the notification-timing evaluation compares against.
#[derive(Debug, Clone, PartialEq)]
pub struct Rhythm {
    pub timezone: chrono_tz::Tz,
    /// Relative chance of a session starting at each local hour, weekdays [0]
    /// and weekends [1].
    pub hour_weights: [[f32; 24]; 2],
    /// Weekend activity relative to weekdays.
    pub weekend_level: f64,
    /// Open propensity per channel (push, email, sms).
    pub channel_propensity: [f32; 3],
}

impl Rhythm {
    /// The true share of the user's sessions per local hour of week (Monday 00:00 = 0).
    pub fn activity_distribution(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(168);
        for day in 0..7 {
            let weekend = day >= 5;
            let w = &self.hour_weights[weekend as usize];
            let total: f32 = w.iter().sum();
            let level = if weekend {
                self.weekend_level as f32
            } else {
                1.0
            };
            out.extend(w.iter().map(|x| level * x / total));
        }
        let sum: f32 = out.iter().sum();
        out.iter_mut().for_each(|x| *x /= sum);
        out
    }

    /// The true probability that a notification sent at `at` on `channel` is opened.
    pub fn open_probability(&self, channel: Channel, at: DateTime<Utc>) -> f32 {
        let peak = self
            .hour_weights
            .iter()
            .flatten()
            .cloned()
            .fold(0f32, f32::max);
        let local = at.with_timezone(&self.timezone);
        let weekend = local.weekday().number_from_monday() >= 6;
        let act = self.hour_weights[weekend as usize][local.hour() as usize] / peak;
        self.channel_propensity[channel.index()] * (0.15 + 0.85 * act)
    }
}

/// What the generator knows and the app does not: per match outcome (in the
/// order of `Dataset::matches`) the logit components, per user the rhythm.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub matches: Vec<MatchComponents>,
    pub rhythms: std::collections::HashMap<Uuid, Rhythm>,
    /// The match probability of any two users.
    pub oracle: MatchOracle,
}

/// The generator's match probability of any two of its users, without a
/// trip context: what a simulated app draws match outcomes from (the
/// experiment simulator), and the ceiling no model can beat.
#[derive(Clone, Default)]
pub struct MatchOracle {
    index: std::collections::HashMap<Uuid, usize>,
    profiles: Vec<Profile>,
    latents: Vec<Latent>,
    nonadditive: bool,
}

impl std::fmt::Debug for MatchOracle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MatchOracle")
            .field("users", &self.profiles.len())
            .finish()
    }
}

impl MatchOracle {
    /// The true probability that `a` and `b` match; None for a user the
    /// generator did not make.
    pub fn probability(&self, a: Uuid, b: Uuid) -> Option<f32> {
        let (i, j) = (*self.index.get(&a)?, *self.index.get(&b)?);
        Some(
            match_components(
                &self.profiles[i],
                &self.latents[i],
                &self.profiles[j],
                &self.latents[j],
                None,
                self.nonadditive,
            )
            .probability(),
        )
    }
}

/// The hidden traits of one user (kept only inside the generator).
#[derive(Clone)]
struct Latent {
    taste: [f32; TAGS.len()],
    taste_norm: f32,
    rhythm: Rhythm,
    rate_per_day: f64,
}

fn random_uuid(rng: &mut ChaCha8Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

/// Nearest style prototype of a style vector.
pub fn style_of(v: &[f32; 3]) -> TravelStyle {
    STYLE_PROTOTYPES
        .iter()
        .map(|(s, p)| {
            let d: f32 = p.iter().zip(v).map(|(a, b)| (a - b) * (a - b)).sum();
            (*s, d)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(s, _)| s)
        .unwrap_or(TravelStyle::Comfort)
}

/// Generate a dataset. Same config, same dataset, on any machine.
pub fn generate(cfg: &GeneratorConfig) -> Dataset {
    generate_with_truth(cfg).0
}

/// Generate a dataset and the generator's ground truth (match components, user
/// rhythms), which offline evaluation checks models against.
pub fn generate_with_truth(cfg: &GeneratorConfig) -> (Dataset, Truth) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let destinations = catalogue::builtin();
    let dest_tags: Vec<TagSet> = destinations
        .iter()
        .map(|d| TagSet::from_names(&d.tags))
        .collect();
    let normal = Normal::new(0.0f64, 1.0).unwrap();
    let popularity: Vec<f32> = destinations
        .iter()
        .map(|_| normal.sample(&mut rng) as f32)
        .collect();

    let mut profiles = Vec::with_capacity(cfg.users);
    let mut latents = Vec::with_capacity(cfg.users);
    for _ in 0..cfg.users {
        let (p, l) = gen_user(cfg, &mut rng);
        profiles.push(p);
        latents.push(l);
    }
    if cfg.hobbies_per_user > 0.0 {
        add_hobbies(cfg, &mut profiles);
    }

    let mut ds = Dataset {
        destinations,
        ..Default::default()
    };
    for (p, l) in profiles.iter().zip(&latents) {
        gen_activity(cfg, &mut rng, p.id, l, &mut ds.activity);
        gen_interactions(cfg, &mut rng, p, l, &dest_tags, &popularity, &mut ds);
        gen_notifications(cfg, &mut rng, p.id, l, &mut ds.notifications);
    }
    let matches = gen_matches(cfg, &mut rng, &profiles, &latents, &dest_tags, &mut ds);
    let rhythms = profiles
        .iter()
        .zip(&latents)
        .map(|(p, l)| (p.id, l.rhythm.clone()))
        .collect();
    let oracle = MatchOracle {
        index: profiles
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id, i))
            .collect(),
        profiles: profiles.clone(),
        latents,
        nonadditive: cfg.nonadditive,
    };
    ds.consents = gen_consents(cfg, &profiles);
    ds.profiles = profiles;
    if cfg.synonym_rate > 0.0 {
        rephrase(&mut ds, cfg);
    }
    (
        ds,
        Truth {
            matches,
            rhythms,
            oracle,
        },
    )
}

/// Phrasings of each tag (in [`TAGS`] order) that are not its name.
pub const SYNONYMS: [[&str; 3]; 24] = [
    ["local cuisine", "street food", "gastronomy"],
    ["historic sites", "ancient ruins", "heritage"],
    ["local traditions", "cultural experiences", "customs"],
    ["seaside", "sunbathing", "sandy shores"],
    ["the outdoors", "national parks", "countryside"],
    ["historic buildings", "cathedrals", "skyscrapers"],
    ["taking pictures", "photo walks", "cameras"],
    ["bars and clubs", "partying", "night clubs"],
    ["trekking", "hillwalking", "trail walking"],
    ["island hopping", "archipelagos", "tropical isles"],
    ["thrill seeking", "extreme sports", "adrenaline"],
    ["spa days", "unwinding", "wellness retreats"],
    ["live concerts", "jazz", "gigs"],
    ["alpine peaks", "high altitude", "the alps"],
    ["safaris", "animal watching", "birdwatching"],
    ["markets", "boutiques", "souvenir hunting"],
    ["galleries", "painting", "street art"],
    ["exhibitions", "museum visits", "collections"],
    ["scuba", "snorkeling", "coral reefs"],
    ["carnivals", "street parties", "celebrations"],
    ["snowboarding", "winter sports", "ski resorts"],
    ["vineyards", "wine tasting", "wineries"],
    ["biking", "bike tours", "cycle touring"],
    ["driving holidays", "scenic drives", "campervans"],
];

/// Write a share of the interests as synonyms (see
/// [`GeneratorConfig::synonym_rate`]); the hidden tastes and all outcomes stay
/// as they were, so only how interests read changes.
fn rephrase(ds: &mut Dataset, cfg: &GeneratorConfig) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_5719_0a11);
    let one = |s: &mut String, rng: &mut ChaCha8Rng| {
        if let Some(t) = tag_index(s) {
            if rng.gen_bool(cfg.synonym_rate.clamp(0.0, 1.0)) {
                *s = SYNONYMS[t][rng.gen_range(0..3)].to_string();
            }
        }
    };
    for p in &mut ds.profiles {
        for i in &mut p.interests {
            one(i, &mut rng);
        }
    }
    for m in &mut ds.matches {
        for i in &mut m.trip_interests {
            one(i, &mut rng);
        }
    }
}

fn gen_user(cfg: &GeneratorConfig, rng: &mut ChaCha8Rng) -> (Profile, Latent) {
    let normal = Normal::new(0.0f64, 1.0).unwrap();
    let id = random_uuid(rng);
    // Taste: a few core interests with strong weights, faint weights elsewhere.
    let mut order: Vec<usize> = (0..TAGS.len()).collect();
    order.shuffle(rng);
    let core = &order[..rng.gen_range(3..=7)];
    let mut taste = [0f32; TAGS.len()];
    for (t, w) in taste.iter_mut().enumerate() {
        let jitter = (0.25 * normal.sample(rng)).exp() as f32;
        *w = if core.contains(&t) {
            1.0 + jitter
        } else {
            0.1 * jitter
        };
    }
    let taste_norm = taste.iter().map(|x| x * x).sum::<f32>().sqrt();
    // Declared interests: each core interest with probability 0.85 (at least one),
    // and sometimes a tag the user only thinks they like.
    let mut interests: Vec<String> = core
        .iter()
        .filter(|_| rng.gen_bool(0.95))
        .map(|&t| TAGS[t].to_string())
        .collect();
    if interests.is_empty() {
        interests.push(TAGS[core[0]].to_string());
    }
    if rng.gen_bool(0.1) {
        interests.push(TAGS[order[TAGS.len() - 1]].to_string());
    }
    let mut style_vector = [0f32; 3];
    for (v, (a, b)) in style_vector.iter_mut().zip(cfg.style_mix) {
        *v = Beta::new(a, b).unwrap().sample(rng) as f32;
    }
    let mut personality = [0f32; 5];
    let traits = Beta::new(cfg.personality_mix.0, cfg.personality_mix.1).unwrap();
    for p in personality.iter_mut() {
        *p = traits.sample(rng) as f32;
    }
    let comfort = style_vector[1] + 0.15 * normal.sample(rng) as f32;
    let budget = if comfort < 0.35 {
        Budget::Low
    } else if comfort < 0.7 {
        Budget::Medium
    } else {
        Budget::High
    };
    let durations = [
        TripDuration::Weekend,
        TripDuration::Week,
        TripDuration::Month,
    ];
    let month_w = 0.1 + 0.5 * style_vector[2] * (1.0 - style_vector[1]);
    let preferred_duration = *durations
        .choose_weighted(rng, |d| match d {
            TripDuration::Weekend => 0.35,
            TripDuration::Week => 0.5,
            TripDuration::Month => month_w,
        })
        .unwrap();
    let (tz_name, lang, _) = *TIMEZONES.choose_weighted(rng, |t| t.2).unwrap();
    let tz: chrono_tz::Tz = tz_name.parse().expect("known time zone");
    let mut languages = vec![lang.to_string()];
    if lang != "en" && rng.gen_bool(0.7) {
        languages.push("en".into());
    }
    if rng.gen_bool(0.2) {
        let other = ["es", "fr", "de", "it", "pt", "ja"][rng.gen_range(0..6)];
        if !languages.iter().any(|l| l == other) {
            languages.push(other.into());
        }
    }
    let age = (32.0 + 9.0 * normal.sample(rng)).clamp(18.0, 75.0) as u8;

    // Daily rhythm: two peaks in local time; weekends shift later.
    let main_peak = [8.0, 12.5, 19.5, 22.0][rng.gen_range(0..4)] + normal.sample(rng) * 1.2;
    let second_peak = rng.gen_range(7.0..23.0);
    let shift = rng.gen_range(0.5..2.5);
    let mut hour_weights = [[0f32; 24]; 2];
    for (w, row) in hour_weights.iter_mut().enumerate() {
        let s = if w == 1 { shift } else { 0.0 };
        for (h, v) in row.iter_mut().enumerate() {
            let hf = h as f64 + 0.5;
            let d1 = circ(hf - main_peak - s);
            let d2 = circ(hf - second_peak - s);
            *v = (0.02
                + (-d1 * d1 / (2.0 * 1.3f64.powi(2))).exp()
                + 0.45 * (-d2 * d2 / (2.0 * 1.6f64.powi(2))).exp()) as f32;
        }
    }
    let rate_per_day = LogNormal::new(0.2f64.ln() + 1.0, 0.9)
        .unwrap()
        .sample(rng)
        .clamp(0.03, 12.0);
    let weekend_level = rng.gen_range(0.5..1.6);
    let channel_propensity = [
        Beta::new(3.0, 3.0).unwrap().sample(rng) as f32,
        Beta::new(1.5, 4.0).unwrap().sample(rng) as f32,
        Beta::new(2.0, 2.5).unwrap().sample(rng) as f32,
    ];
    let created_at = cfg.start - Duration::minutes(rng.gen_range(0..365 * 24 * 60));
    let profile = Profile {
        id,
        display_name: format!("traveller-{}", &id.simple().to_string()[..8]),
        age,
        interests,
        travel_style: style_of(&style_vector),
        style_vector,
        personality,
        languages,
        timezone: tz_name.to_string(),
        budget,
        preferred_duration,
        created_at,
    };
    let latent = Latent {
        taste,
        taste_norm,
        rhythm: Rhythm {
            timezone: tz,
            hour_weights,
            weekend_level,
            channel_propensity,
        },
        rate_per_day,
    };
    (profile, latent)
}

/// Signed distance on the 24-hour circle.
fn circ(d: f64) -> f64 {
    let mut d = d % 24.0;
    if d > 12.0 {
        d -= 24.0;
    }
    if d < -12.0 {
        d += 24.0;
    }
    d
}

fn pick_weighted(rng: &mut ChaCha8Rng, w: &[f32]) -> usize {
    let total: f32 = w.iter().sum();
    let mut x = rng.gen::<f32>() * total;
    for (i, v) in w.iter().enumerate() {
        x -= v;
        if x <= 0.0 {
            return i;
        }
    }
    w.len() - 1
}

fn gen_activity(
    cfg: &GeneratorConfig,
    rng: &mut ChaCha8Rng,
    user: Uuid,
    l: &Latent,
    out: &mut Vec<ActivityEvent>,
) {
    let first_day = cfg.start.date_naive();
    for day in 0..cfg.days {
        let date = first_day + Duration::days(day as i64);
        let noon = date.and_hms_opt(12, 0, 0).unwrap().and_utc();
        let offset = l
            .rhythm
            .timezone
            .offset_from_utc_datetime(&noon.naive_utc())
            .fix();
        let local_date = (noon + Duration::seconds(offset.local_minus_utc() as i64)).date_naive();
        let weekend = local_date.weekday().number_from_monday() >= 6;
        let lambda = l.rate_per_day * if weekend { l.rhythm.weekend_level } else { 1.0 };
        let n = Poisson::new(lambda).unwrap().sample(rng) as u32;
        for _ in 0..n {
            let h = pick_weighted(rng, &l.rhythm.hour_weights[weekend as usize]);
            let local =
                local_date.and_hms_opt(h as u32, rng.gen_range(0..60), rng.gen_range(0..60));
            let Some(local) = local else { continue };
            let at = local.and_utc() - Duration::seconds(offset.local_minus_utc() as i64);
            if at >= cfg.start && at < cfg.end() {
                out.push(ActivityEvent {
                    user_id: user,
                    occurred_at: at,
                });
            }
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn taste_affinity(l: &Latent, tags: &TagSet) -> f32 {
    let n = tags.len().max(1) as f32;
    let dot: f32 = (0..TAGS.len())
        .filter(|&i| tags.contains(i))
        .map(|i| l.taste[i])
        .sum();
    dot / (n.sqrt() * l.taste_norm)
}

fn random_time(cfg: &GeneratorConfig, rng: &mut ChaCha8Rng) -> DateTime<Utc> {
    cfg.start + Duration::seconds(rng.gen_range(0..cfg.days as i64 * 86_400))
}

fn gen_interactions(
    cfg: &GeneratorConfig,
    rng: &mut ChaCha8Rng,
    p: &Profile,
    l: &Latent,
    dest_tags: &[TagSet],
    popularity: &[f32],
    ds: &mut Dataset,
) {
    let gumbel = Gumbel::new(0.0f64, 1.0).unwrap();
    let utility: Vec<f32> = ds
        .destinations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            2.2 * taste_affinity(l, &dest_tags[i]) + 0.6 * popularity[i]
                - 0.9 * (p.budget.index() as f32 - d.cost_level.index() as f32).abs()
                + 0.4 * d.trip_lengths.contains(&p.preferred_duration) as u8 as f32
        })
        .collect();
    let n_views = Poisson::new(cfg.views_per_user * (0.3 + l.rate_per_day.min(4.0) / 2.0))
        .unwrap()
        .sample(rng) as usize;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n_views {
        // Gumbel-max: a draw with probability ∝ exp(1.2 · utility).
        let (i, _) = utility
            .iter()
            .enumerate()
            .map(|(i, u)| (i, 1.2 * u + gumbel.sample(rng) as f32))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        let d = ds.destinations[i].id;
        let mut at = random_time(cfg, rng);
        ds.interactions.push(Interaction {
            user_id: p.id,
            destination_id: d,
            kind: InteractionKind::Viewed,
            rating: None,
            occurred_at: at,
        });
        if !seen.insert(i) {
            continue;
        }
        let u = utility[i];
        let mut step = |kind, prob: f32, max_days: i64, rng: &mut ChaCha8Rng| {
            if rng.gen::<f32>() >= prob {
                return false;
            }
            at += Duration::minutes(rng.gen_range(1..max_days * 1440));
            if at >= cfg.end() {
                // What would happen after the window is not observed yet.
                return false;
            }
            let rating = (kind == InteractionKind::Rated)
                .then(|| (1.0 + 4.0 * sigmoid(2.0 * u - 1.0 + rng.gen_range(-0.8..0.8))).round());
            ds.interactions.push(Interaction {
                user_id: p.id,
                destination_id: d,
                kind,
                rating,
                occurred_at: at,
            });
            true
        };
        if step(InteractionKind::Saved, sigmoid(2.0 * u - 2.0), 3, rng)
            && step(InteractionKind::Booked, sigmoid(1.5 * u - 1.5), 10, rng)
            && step(InteractionKind::Visited, 0.85, 40, rng)
        {
            step(InteractionKind::Rated, 0.6, 5, rng);
        }
    }
}

fn gen_notifications(
    cfg: &GeneratorConfig,
    rng: &mut ChaCha8Rng,
    user: Uuid,
    l: &Latent,
    out: &mut Vec<NotificationRecord>,
) {
    let n = Poisson::new(cfg.notifications_per_user)
        .unwrap()
        .sample(rng) as usize;
    for _ in 0..n {
        let sent_at = random_time(cfg, rng);
        let channel = *[Channel::Push, Channel::Email, Channel::Sms]
            .choose_weighted(rng, |c| match c {
                Channel::Push => 0.6,
                Channel::Email => 0.3,
                Channel::Sms => 0.1,
            })
            .unwrap();
        let notification_type = NotificationType::ALL[rng.gen_range(0..3)];
        let p_open = l.rhythm.open_probability(channel, sent_at);
        let opened_at = (rng.gen::<f32>() < p_open).then(|| {
            let mean_min = match channel {
                Channel::Push => 20.0,
                Channel::Sms => 10.0,
                Channel::Email => 180.0,
            };
            sent_at + Duration::minutes((rng.gen::<f64>() * 2.0 * mean_min) as i64 + 1)
        });
        out.push(NotificationRecord {
            user_id: user,
            notification_type,
            channel,
            sent_at,
            opened_at,
        });
    }
}

/// Free-text hobbies that are none of the catalogue's tags nor their
/// synonyms, most popular first ([`hobby_share`]).
pub const HOBBIES: [&str; 60] = [
    "cooking",
    "reading",
    "running",
    "yoga",
    "pilates",
    "gaming",
    "football",
    "movies",
    "board games",
    "podcasts",
    "tennis",
    "swimming",
    "gardening",
    "watercolours",
    "guitar",
    "baking",
    "chess",
    "dancing",
    "volunteering",
    "surfing",
    "bowling",
    "climbing",
    "poetry",
    "anime",
    "basketball",
    "knitting",
    "pottery",
    "opera",
    "genealogy",
    "fishing",
    "sailing",
    "salsa",
    "crossfit",
    "meditation",
    "astronomy",
    "calligraphy",
    "theatre",
    "scuba diving",
    "woodworking",
    "tarot",
    "beekeeping",
    "kitesurfing",
    "falconry",
    "origami",
    "fencing",
    "archery",
    "bouldering",
    "ceramics",
    "sumo",
    "flamenco",
    "paragliding",
    "stand-up comedy",
    "cricket",
    "rugby",
    "golf",
    "horse riding",
    "vinyl records",
    "sourdough",
    "urban sketching",
    "ice hockey",
];

/// The share of users who have hobby `rank` among those who have any:
/// Zipf's law (exponent 1), so a shared "cooking" is common and a shared
/// "falconry" rare.
pub fn hobby_share(rank: usize) -> f64 {
    let h: f64 = (1..=HOBBIES.len()).map(|r| 1.0 / r as f64).sum();
    1.0 / ((rank + 1) as f64 * h)
}

/// How telling a shared hobby is: its surprise, −ln(share), over that of
/// the rarest (0..1).
fn hobby_rarity(rank: usize) -> f32 {
    (hobby_share(rank).ln() / hobby_share(HOBBIES.len() - 1).ln()) as f32
}

/// Add each user's hobbies to their free-text interests, from a stream of
/// its own (the rest of the dataset stays what it was for a seed).
fn add_hobbies(cfg: &GeneratorConfig, profiles: &mut [Profile]) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x040B_B1E5);
    let n = Poisson::new(cfg.hobbies_per_user).unwrap();
    // The same draws `choose_weighted` makes, with the weights built once.
    let Ok(rank) = WeightedIndex::new((0..HOBBIES.len()).map(hobby_share)) else {
        return;
    };
    for p in profiles {
        let k = (n.sample(&mut rng) as usize).min(8);
        let mut picked: Vec<usize> = vec![];
        for _ in 0..k {
            let r = rank.sample(&mut rng);
            if !picked.contains(&r) {
                picked.push(r);
            }
        }
        p.interests
            .extend(picked.into_iter().map(|r| HOBBIES[r].to_string()));
    }
}

/// What each user agreed to per channel, from a stream of its own (the rest
/// of the demo stays what it was for a seed). Most users answered the app's
/// consent prompts: push granted 9 times in 10, email 6 in 10, SMS 3 in 10,
/// each independent of what was sent before (consent can be withdrawn after
/// a message went out), and push after all where that left none; the other
/// 15 % never answered and have no rows, so the service's default applies
/// to them.
fn gen_consents(cfg: &GeneratorConfig, profiles: &[Profile]) -> Vec<ChannelConsent> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x00C0_45E7);
    let mut out = Vec::with_capacity(profiles.len() * 3);
    for p in profiles {
        if rng.gen::<f32>() < 0.15 {
            continue;
        }
        let mut granted = [0.9, 0.6, 0.3].map(|share| rng.gen::<f32>() < share);
        // Everyone who answered kept at least one way to be reached (the
        // app asks again before it lets push go): push, if nothing else.
        if !granted.iter().any(|g| *g) {
            granted[0] = true;
        }
        for (channel, granted) in Channel::ALL.iter().zip(granted) {
            out.push(ChannelConsent {
                user_id: p.id,
                channel: *channel,
                granted,
            });
        }
    }
    out
}

/// The generator's logit of a match, split into the three factor groups
/// (interests incl. the context destination; travel style incl. budget,
/// language and age; personality). Demo data only: offline evaluation uses it to
/// check the model's factors mean what they say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchComponents {
    pub interest: f32,
    pub travel_style: f32,
    pub personality: f32,
}

/// The match logit's constant term.
const MATCH_BIAS: f32 = -0.2;

impl MatchComponents {
    /// The true match probability.
    pub fn probability(&self) -> f32 {
        sigmoid(MATCH_BIAS + self.interest + self.travel_style + self.personality)
    }
}

/// The generator's match components of two users and a context.
fn match_components(
    pa: &Profile,
    la: &Latent,
    pb: &Profile,
    lb: &Latent,
    ctx: Option<&TagSet>,
    nonadditive: bool,
) -> MatchComponents {
    let cos_taste: f32 = la
        .taste
        .iter()
        .zip(&lb.taste)
        .map(|(a, b)| a * b)
        .sum::<f32>()
        / (la.taste_norm * lb.taste_norm);
    let style_dist = pa
        .style_vector
        .iter()
        .zip(&pb.style_vector)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f32>()
        .sqrt()
        / 3f32.sqrt();
    let dp = |i: usize| (pa.personality[i] - pb.personality[i]).abs();
    let mp = |i: usize| (pa.personality[i] + pb.personality[i]) / 2.0;
    let shared_lang = pa.languages.iter().any(|l| pb.languages.contains(l)) as u8 as f32;
    let dbudget = (pa.budget.index() as f32 - pb.budget.index() as f32).abs();
    let ctx_taste = ctx
        .map(|t| (taste_affinity(la, t) + taste_affinity(lb, t)) / 2.0 - 0.5)
        .unwrap_or(0.0);
    let dage = (pa.age as f32 - pb.age as f32).abs();
    // Shared hobbies, each counting by how rare it is.
    let mut shared: Vec<usize> = pa
        .interests
        .iter()
        .filter(|i| pb.interests.contains(i))
        .filter_map(|i| HOBBIES.iter().position(|h| h == i))
        .collect();
    shared.sort_unstable();
    let hobbies: f32 = shared.into_iter().map(hobby_rarity).sum();
    let mut c = MatchComponents {
        interest: 4.8 * (cos_taste - 0.15) + 3.2 * ctx_taste + 1.6 * hobbies,
        travel_style: 3.6 * (0.5 - style_dist) + 0.6 * shared_lang - 0.5 * dbudget - 0.02 * dage,
        personality: -2.2 * dp(1) - 1.0 * dp(0) + 1.2 * (mp(3) - 0.5) - 0.8 * (mp(4) - 0.5),
    };
    if nonadditive {
        // A budget gap of one level is fine, of two it is not; styles far
        // apart hurt more than linearly; two extraverts enjoy each other,
        // two anxious travellers do not.
        let (ea, eb) = (pa.personality[2], pb.personality[2]);
        let (na, nb) = (pa.personality[4], pb.personality[4]);
        c.travel_style = 3.6 * (0.5 - style_dist) - 6.0 * (style_dist - 0.35).max(0.0)
            + 0.6 * shared_lang
            - 1.6 * (dbudget >= 2.0) as u8 as f32
            - 0.02 * dage;
        c.personality += 6.0 * ((ea - 0.5).max(0.0) * (eb - 0.5).max(0.0))
            - 6.0 * ((na - 0.5).max(0.0) * (nb - 0.5).max(0.0));
    }
    c
}

fn gen_matches(
    cfg: &GeneratorConfig,
    rng: &mut ChaCha8Rng,
    profiles: &[Profile],
    latents: &[Latent],
    dest_tags: &[TagSet],
    ds: &mut Dataset,
) -> Vec<MatchComponents> {
    let mut truth = vec![];
    if profiles.len() < 2 {
        return truth;
    }
    let mut by_tz: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    for (i, p) in profiles.iter().enumerate() {
        by_tz.entry(p.timezone.as_str()).or_default().push(i);
    }
    let per_user = Poisson::new(cfg.matches_per_user / 2.0).unwrap();
    for a in 0..profiles.len() {
        let n = per_user.sample(rng) as usize;
        for _ in 0..n {
            let local = &by_tz[profiles[a].timezone.as_str()];
            let b = if rng.gen_bool(0.5) && local.len() > 1 {
                local[rng.gen_range(0..local.len())]
            } else {
                rng.gen_range(0..profiles.len())
            };
            if a == b {
                continue;
            }
            let with_ctx = rng.gen_bool(0.8);
            let di = rng.gen_range(0..ds.destinations.len());
            // Half the proposals with a destination also name what the trip is
            // about: one or two of the destination's tags; the trip is then about
            // those rather than everything the place offers.
            let trip: Vec<&str> = if with_ctx && rng.gen_bool(0.5) {
                let mut t = dest_tags[di].names();
                t.shuffle(rng);
                t.truncate(rng.gen_range(1..=2));
                t
            } else {
                vec![]
            };
            let trip_tags = TagSet::from_names(&trip);
            let ctx = match (with_ctx, trip.is_empty()) {
                (false, _) => None,
                (true, true) => Some(&dest_tags[di]),
                (true, false) => Some(&trip_tags),
            };
            let c = match_components(
                &profiles[a],
                &latents[a],
                &profiles[b],
                &latents[b],
                ctx,
                cfg.nonadditive,
            );
            let p = c.probability();
            truth.push(c);
            let decided_at = random_time(cfg, rng);
            let trip_start: Option<NaiveDate> =
                with_ctx.then(|| (decided_at + Duration::days(rng.gen_range(14..90))).date_naive());
            ds.matches.push(MatchOutcome {
                user_a: profiles[a].id,
                user_b: profiles[b].id,
                destination_id: with_ctx.then_some(ds.destinations[di].id),
                trip_start,
                trip_interests: trip.iter().map(|t| t.to_string()).collect(),
                matched: rng.gen::<f32>() < p,
                decided_at,
                true_probability: Some(p),
            });
        }
    }
    truth
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GeneratorConfig {
        GeneratorConfig {
            users: 200,
            seed: 7,
            ..Default::default()
        }
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = generate(&small());
        let b = generate(&small());
        assert_eq!(a.profiles, b.profiles);
        assert_eq!(a.matches, b.matches);
        assert_eq!(a.activity, b.activity);
        let c = generate(&GeneratorConfig { seed: 8, ..small() });
        assert_ne!(a.profiles, c.profiles);
    }

    #[test]
    fn hobbies_are_free_text_beyond_the_tags_and_shared_rare_ones_raise_the_odds() {
        let plain = generate(&small());
        let hob = generate(&GeneratorConfig {
            hobbies_per_user: 3.0,
            ..small()
        });
        assert_eq!(plain.interactions, hob.interactions);
        assert_eq!(plain.activity, hob.activity);
        let mut n = 0;
        for (p, q) in plain.profiles.iter().zip(&hob.profiles) {
            assert_eq!(q.interests[..p.interests.len()], p.interests[..]);
            for h in &q.interests[p.interests.len()..] {
                assert!(
                    tag_index(h).is_none() && HOBBIES.contains(&h.as_str()),
                    "{h}"
                );
                n += 1;
            }
        }
        assert!(n > 400, "{n} hobbies for 200 users");
        for h in HOBBIES {
            assert!(
                tag_index(h).is_none() && !SYNONYMS.iter().flatten().any(|s| *s == h),
                "{h}"
            );
        }
        // Zipf: the first hobby is far commoner than the last.
        assert!(hobby_share(0) > 30.0 * hobby_share(HOBBIES.len() - 1));
        assert!(hobby_rarity(HOBBIES.len() - 1) > 2.0 * hobby_rarity(0));
        // The same pairs, likelier where a shared hobby is rarer.
        let p = |d: &Dataset| {
            d.matches
                .iter()
                .map(|m| m.true_probability.unwrap())
                .collect::<Vec<_>>()
        };
        let (a, b) = (p(&plain), p(&hob));
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| y >= x));
        assert!(a.iter().zip(&b).any(|(x, y)| y > x));
    }

    #[test]
    fn synonyms_change_only_how_interests_read() {
        let plain = generate(&small());
        let syn = generate(&GeneratorConfig {
            synonym_rate: 0.5,
            ..small()
        });
        assert_eq!(plain.interactions, syn.interactions);
        assert_eq!(plain.activity, syn.activity);
        let (mut total, mut rewritten) = (0, 0);
        for (p, q) in plain.profiles.iter().zip(&syn.profiles) {
            assert_eq!((p.id, p.age, p.style_vector), (q.id, q.age, q.style_vector));
            for (a, b) in p.interests.iter().zip(&q.interests) {
                total += 1;
                if a != b {
                    rewritten += 1;
                    // A rewritten interest is one of its own tag's phrasings.
                    let t = tag_index(a).unwrap();
                    assert!(SYNONYMS[t].contains(&b.as_str()), "{a} -> {b}");
                }
            }
        }
        let share = rewritten as f64 / total as f64;
        assert!((0.4..0.6).contains(&share), "{share}");
        for (m, n) in plain.matches.iter().zip(&syn.matches) {
            assert_eq!(
                (m.user_a, m.matched, m.decided_at),
                (n.user_a, n.matched, n.decided_at)
            );
        }
        // No phrasing is itself a tag, so exact matching cannot read it.
        for s in SYNONYMS.iter().flatten() {
            assert!(
                tag_index(s).is_none() && tag_index(&s.replace(' ', "_")).is_none(),
                "{s}"
            );
        }
    }

    #[test]
    fn everything_lies_inside_the_window_and_references_exist() {
        let cfg = small();
        let d = generate(&cfg);
        let users: std::collections::HashSet<_> = d.profiles.iter().map(|p| p.id).collect();
        let dests: std::collections::HashSet<_> = d.destinations.iter().map(|p| p.id).collect();
        assert!(d
            .activity
            .iter()
            .all(|e| e.occurred_at >= cfg.start && e.occurred_at < cfg.end()));
        assert!(d.activity.iter().all(|e| users.contains(&e.user_id)));
        assert!(d
            .interactions
            .iter()
            .all(|i| users.contains(&i.user_id) && dests.contains(&i.destination_id)));
        assert!(d.matches.iter().all(|m| m.user_a != m.user_b));
        assert!(!d.matches.is_empty() && !d.interactions.is_empty() && !d.notifications.is_empty());
        let rate = d.matches.iter().filter(|m| m.matched).count() as f64 / d.matches.len() as f64;
        assert!((0.15..0.85).contains(&rate), "match rate {rate}");
    }

    #[test]
    fn activity_follows_the_users_local_rhythm() {
        // Users' sessions cluster in a few local hours: the busiest local hour of an
        // active user holds far more than the 1/24 a flat rhythm would give it.
        let d = generate(&small());
        let tz_of: std::collections::HashMap<_, _> = d
            .profiles
            .iter()
            .map(|p| (p.id, p.timezone.parse::<chrono_tz::Tz>().unwrap()))
            .collect();
        let mut hist: std::collections::HashMap<Uuid, [u32; 24]> = Default::default();
        for e in &d.activity {
            let h = e.occurred_at.with_timezone(&tz_of[&e.user_id]).hour() as usize;
            hist.entry(e.user_id).or_insert([0; 24])[h] += 1;
        }
        let shares: Vec<f64> = hist
            .values()
            .filter(|h| h.iter().sum::<u32>() >= 100)
            .map(|h| *h.iter().max().unwrap() as f64 / h.iter().sum::<u32>() as f64)
            .collect();
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        assert!(mean > 2.5 / 24.0, "mean peak share {mean}");
    }
}
