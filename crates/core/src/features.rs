//! Feature engineering: one code path for training and serving.
//!
//! [`UserFeatures`] condenses a user's profile and history (as of a point in
//! time) into what the models read; the `*_features` functions turn users,
//! destinations and request context into the fixed-order vectors the ONNX models
//! take. The trainers and the server call exactly these functions, so there is no
//! training/serving skew.

use crate::catalogue::Catalogue;
use crate::types::*;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

/// Version of [`UserFeatures`]' shape. Caches key and tag stored features with
/// it, so bump it whenever a field is added, removed or changes meaning.
pub const FEATURE_SCHEMA_VERSION: u16 = 3;

/// Hours in a week: the activity histogram's length (Monday 00:00 local = 0).
pub const HOURS_PER_WEEK: usize = 168;

/// Per-user features: everything the three models read about one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserFeatures {
    pub user_id: Uuid,
    pub interests: TagSet,
    pub style_vector: [f32; 3],
    pub travel_style: TravelStyle,
    pub personality: [f32; 5],
    pub languages: Vec<String>,
    pub budget: Budget,
    pub preferred_duration: TripDuration,
    pub age: u8,
    pub timezone: String,
    /// Tag profile of the destinations the user engaged with, weighted by how
    /// strongly (a view counts 1, a booking 3); zero without history.
    pub tag_affinity: [f32; TAGS.len()],
    pub n_interactions: u32,
    /// Catalogue indices of destinations already booked or visited (never
    /// recommended again), sorted.
    pub consumed: Vec<u32>,
    /// Catalogue indices of destinations interacted with in any way, sorted.
    pub engaged: Vec<u32>,
    /// App sessions per local hour of the week.
    pub activity: Vec<f32>,
    pub n_activity: u32,
    /// Notifications sent and opened per channel (push, email, sms).
    pub channel_sent: [u32; 3],
    pub channel_opened: [u32; 3],
    /// What the declared interests mean, as a soft profile over [`TAGS`]
    /// (see [`TagSpace`]); `None` without a sentence-embedding model, when
    /// only the exact tag names count.
    #[serde(default)]
    pub semantic_interests: Option<TagProfile>,
    /// What the user agreed to per channel (push, email, sms); `None`:
    /// the app has no answer, and the service's default applies.
    #[serde(default)]
    pub consent: [Option<bool>; 3],
    /// When the latest notifications were (or are to be) sent, ascending:
    /// those from a day before the features were made on, at most
    /// [`RECENT_SENDS`] (what a frequency cap counts).
    #[serde(default)]
    pub recent_sends: Vec<DateTime<Utc>>,
    /// The declared interests as free text ([`interest_phrases`]): what the
    /// tag view misses ("surfing", "opera").
    #[serde(default)]
    pub interest_phrases: Vec<String>,
}

/// The most recent notifications kept per user for a frequency cap: more
/// than any cap a day allows (the setting's upper bound).
pub const RECENT_SENDS: usize = 48;

/// Traits as the models saw them in training: each in [0, 1]. The app's
/// database may hold anything (a value of 1e70 reads as an infinite f32):
/// out-of-range values are clamped and non-finite ones read as the middle,
/// so no feature is ever infinite or NaN (found by the `features` fuzz target).
fn unit_interval<const N: usize>(v: [f32; N]) -> [f32; N] {
    v.map(|x| {
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.5
        }
    })
}

/// Local hour of the week (Monday 00:00 = 0) of an instant in a time zone.
pub fn hour_of_week(at: DateTime<Utc>, tz: &chrono_tz::Tz) -> usize {
    local_hour_of_week(&at.with_timezone(tz))
}

/// The hour of the week of a local time (Monday 0h = 0).
pub fn local_hour_of_week<Tz: chrono::TimeZone>(l: &DateTime<Tz>) -> usize {
    l.weekday().num_days_from_monday() as usize * 24 + l.hour() as usize
}

/// Parse a time-zone name, falling back to UTC for names the tz database lacks.
pub fn parse_tz(name: &str) -> chrono_tz::Tz {
    name.parse().unwrap_or(chrono_tz::UTC)
}

fn interaction_weight(kind: InteractionKind) -> f32 {
    match kind {
        InteractionKind::Viewed => 1.0,
        InteractionKind::Saved => 2.0,
        InteractionKind::Booked | InteractionKind::Visited => 3.0,
        InteractionKind::Rated => 1.0,
    }
}

impl UserFeatures {
    /// Features of a user from their history, counting only what happened before
    /// `as_of` (training passes the split time; serving passes now).
    pub fn from_history(
        profile: &Profile,
        history: &UserHistory,
        catalogue: &Catalogue,
        as_of: DateTime<Utc>,
    ) -> Self {
        let tz = parse_tz(&profile.timezone);
        let mut tag_affinity = [0f32; TAGS.len()];
        let mut consumed = Vec::new();
        let mut engaged = Vec::new();
        let mut n_interactions = 0;
        for i in history
            .interactions
            .iter()
            .filter(|i| i.occurred_at < as_of)
        {
            let Some(di) = catalogue.index_of(&i.destination_id) else {
                continue;
            };
            n_interactions += 1;
            let tags = &catalogue.tags[di];
            let w = interaction_weight(i.kind) / (tags.len().max(1) as f32).sqrt();
            for (t, a) in tag_affinity.iter_mut().enumerate() {
                if tags.contains(t) {
                    *a += w;
                }
            }
            engaged.push(di as u32);
            if matches!(
                i.kind,
                InteractionKind::Booked | InteractionKind::Visited | InteractionKind::Rated
            ) {
                consumed.push(di as u32);
            }
        }
        let norm = tag_affinity.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            tag_affinity.iter_mut().for_each(|a| *a /= norm);
        }
        for v in [&mut consumed, &mut engaged] {
            v.sort_unstable();
            v.dedup();
        }
        let mut activity = vec![0f32; HOURS_PER_WEEK];
        let mut n_activity = 0;
        for at in history.activity.iter().filter(|t| **t < as_of) {
            activity[hour_of_week(*at, &tz)] += 1.0;
            n_activity += 1;
        }
        let mut channel_sent = [0; 3];
        let mut channel_opened = [0; 3];
        for n in history.notifications.iter().filter(|n| n.sent_at < as_of) {
            channel_sent[n.channel.index()] += 1;
            if n.opened_at.is_some_and(|o| o < as_of) {
                channel_opened[n.channel.index()] += 1;
            }
        }
        // A frequency cap looks a day back from any time from now on, and
        // at notifications the app has already scheduled.
        let since = as_of - chrono::Duration::hours(24);
        let mut recent_sends: Vec<DateTime<Utc>> = history
            .notifications
            .iter()
            .map(|n| n.sent_at)
            .filter(|t| *t > since)
            .collect();
        recent_sends.sort_unstable();
        let keep_from = recent_sends.len().saturating_sub(RECENT_SENDS);
        recent_sends.drain(..keep_from);
        let mut consent = [None; 3];
        for c in &history.consents {
            consent[c.channel.index()] = Some(c.granted);
        }
        Self {
            user_id: profile.id,
            interests: TagSet::from_names(&profile.interests),
            style_vector: unit_interval(profile.style_vector),
            travel_style: profile.travel_style,
            personality: unit_interval(profile.personality),
            languages: profile.languages.clone(),
            budget: profile.budget,
            preferred_duration: profile.preferred_duration,
            age: profile.age,
            timezone: profile.timezone.clone(),
            tag_affinity,
            n_interactions,
            consumed,
            engaged,
            activity,
            n_activity,
            channel_sent,
            channel_opened,
            semantic_interests: None,
            consent,
            recent_sends,
            interest_phrases: interest_phrases(&profile.interests),
        }
    }

    /// Features of a user known only by their sessions (e.g. a public activity
    /// log): no profile, no interactions, no notifications.
    pub fn from_activity(user_id: Uuid, timezone: &str, sessions: &[DateTime<Utc>]) -> Self {
        let tz = parse_tz(timezone);
        let mut activity = vec![0f32; HOURS_PER_WEEK];
        for at in sessions {
            activity[hour_of_week(*at, &tz)] += 1.0;
        }
        Self {
            user_id,
            interests: TagSet::default(),
            style_vector: [0.5; 3],
            travel_style: TravelStyle::Comfort,
            personality: [0.5; 5],
            languages: vec![],
            budget: Budget::Medium,
            preferred_duration: TripDuration::Week,
            age: 30,
            timezone: timezone.to_string(),
            tag_affinity: [0.0; TAGS.len()],
            n_interactions: 0,
            consumed: vec![],
            engaged: vec![],
            activity,
            n_activity: sessions.len() as u32,
            channel_sent: [0; 3],
            channel_opened: [0; 3],
            semantic_interests: None,
            consent: [None; 3],
            recent_sends: vec![],
            interest_phrases: vec![],
        }
    }

    pub fn has_history(&self) -> bool {
        self.n_interactions > 0
    }

    pub fn has_consumed(&self, dest: usize) -> bool {
        self.consumed.binary_search(&(dest as u32)).is_ok()
    }

    pub fn has_engaged(&self, dest: usize) -> bool {
        self.engaged.binary_search(&(dest as u32)).is_ok()
    }

    /// A unit-length estimate of the user's taste over tags: declared interests
    /// and behaviour, weighted equally when both are known.
    pub fn taste_estimate(&self) -> [f32; TAGS.len()] {
        let mut t = [0f32; TAGS.len()];
        let interests = self.interest_tags();
        let k = interests.len().max(1) as f32;
        for (i, v) in t.iter_mut().enumerate() {
            if interests.contains(i) {
                *v += 1.0 / k.sqrt();
            }
            *v += self.tag_affinity[i];
        }
        let n = t.iter().map(|x| x * x).sum::<f32>().sqrt();
        if n > 0.0 {
            t.iter_mut().for_each(|x| *x /= n);
        }
        t
    }

    /// The interests as a profile over [`TAGS`]: their meaning when known,
    /// else 1 on each declared tag.
    pub fn interest_profile(&self) -> TagProfile {
        self.semantic_interests
            .unwrap_or_else(|| exact_profile(&self.interests))
    }

    /// The tags the interests stand for: their exact names, and with a soft
    /// profile every tag they mean fully ("trekking" stands for hiking).
    pub fn interest_tags(&self) -> TagSet {
        match &self.semantic_interests {
            Some(p) => self.interests.union(&full_tags(p)),
            None => self.interests,
        }
    }

    /// Cosine between the user's tag affinity and a tag set (0 without history).
    pub fn affinity_to(&self, tags: &TagSet) -> f32 {
        if tags.is_empty() {
            return 0.0;
        }
        let dot: f32 = (0..TAGS.len())
            .filter(|&t| tags.contains(t))
            .map(|t| self.tag_affinity[t])
            .sum();
        dot / (tags.len() as f32).sqrt()
    }
}

/// Request context of a match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MatchContext {
    /// Tags of the context destination, when it is in the catalogue.
    pub destination_tags: Option<TagSet>,
    /// Interests named in the request.
    pub interests: TagSet,
    /// What the request's interests mean (see [`TagSpace`]), when a
    /// sentence-embedding model is loaded.
    pub semantic_interests: Option<TagProfile>,
    /// How rare each free-text interest is in the app's data (the model's
    /// table, learned with it); `None`: every phrase counts as rarest.
    pub rarity: Option<std::sync::Arc<InterestRarity>>,
}

/// Longest interest phrase kept for the free-text view, in characters.
const MAX_PHRASE: usize = 64;

/// Most interest phrases kept per user for the free-text view.
pub const MAX_PHRASES: usize = 32;

/// A user's interests as free text: as [`normalize_phrase`] reads them, at
/// most [`MAX_PHRASE`] characters each, distinct, sorted, at most
/// [`MAX_PHRASES`].
pub fn interest_phrases(interests: &[String]) -> Vec<String> {
    let mut v: Vec<String> = interests
        .iter()
        .map(|i| {
            normalize_phrase(i)
                .chars()
                .take(MAX_PHRASE)
                .collect::<String>()
        })
        .filter(|p| !p.is_empty())
        .collect();
    v.sort_unstable();
    v.dedup();
    v.truncate(MAX_PHRASES);
    v
}

/// How many users of the app's data declare each free-text interest: the
/// rarity table a model learns with its training data and carries in its
/// `model.json`, so serving weighs a shared interest as training did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InterestRarity {
    /// Users counted.
    pub users: u32,
    /// Users per phrase, for phrases at least two users declare (a phrase
    /// one user declares can be shared by no pair of them), the most
    /// common [`InterestRarity::MAX_PHRASES`].
    pub counts: std::collections::BTreeMap<String, u32>,
}

impl InterestRarity {
    /// Phrases kept in a table: bounds a model.json.
    pub const MAX_PHRASES: usize = 20_000;

    /// The table of a population's interest lists.
    pub fn of<'a>(interests: impl Iterator<Item = &'a [String]>) -> Self {
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut users = 0u32;
        for list in interests {
            users += 1;
            for p in interest_phrases(list) {
                *counts.entry(p).or_default() += 1;
            }
        }
        let mut kept: Vec<(String, u32)> = counts.into_iter().filter(|(_, n)| *n >= 2).collect();
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(Self::MAX_PHRASES);
        Self {
            users,
            counts: kept.into_iter().collect(),
        }
    }

    /// How telling it is that two users share `phrase`: its inverse document
    /// frequency over that of a phrase nobody else has, in (0, 1]; 1 for a
    /// phrase the table does not know.
    pub fn rarity(&self, phrase: &str) -> f32 {
        let n = self.users as f32 + 1.0;
        let df = self.counts.get(phrase).copied().unwrap_or(0) as f32;
        ((n / (df + 1.0)).ln() / n.ln().max(f32::EPSILON)).clamp(0.0, 1.0)
    }
}

/// The factor groups of the match model, in the order of its `factors` output.
pub const MATCH_FACTORS: [&str; 3] = ["interest_overlap", "travel_style", "personality"];

/// Names of the match features, in model-input order, with the factor group
/// (index into [`MATCH_FACTORS`]) each belongs to.
pub const MATCH_FEATURES: [(&str, usize); 31] = [
    ("interest_jaccard", 0),
    ("interest_shared_count", 0),
    ("interest_cosine", 0),
    ("affinity_cosine", 0),
    ("cross_affinity", 0),
    ("taste_estimate_cosine", 0),
    ("both_have_history", 0),
    ("context_interest_fit", 0),
    ("context_affinity_fit", 0),
    ("context_shared_interests", 0),
    ("has_context", 0),
    ("context_names_interests", 0),
    ("style_pace_diff", 1),
    ("style_comfort_diff", 1),
    ("style_spontaneity_diff", 1),
    ("style_distance", 1),
    ("same_travel_style", 1),
    ("budget_diff", 1),
    ("same_preferred_duration", 1),
    ("shared_language", 1),
    ("age_diff", 1),
    ("openness_diff", 2),
    ("conscientiousness_diff", 2),
    ("extraversion_diff", 2),
    ("agreeableness_diff", 2),
    ("neuroticism_diff", 2),
    ("openness_mean", 2),
    ("conscientiousness_mean", 2),
    ("extraversion_mean", 2),
    ("agreeableness_mean", 2),
    ("neuroticism_mean", 2),
];

/// The match features a semantic model reads after [`MATCH_FEATURES`]: the
/// same questions as `interest_cosine` and `context_interest_fit`, asked of
/// the interests' meaning (soft profiles) instead of their exact names.
pub const SEMANTIC_MATCH_FEATURES: [(&str, usize); 2] =
    [("semantic_interest_cosine", 0), ("semantic_context_fit", 0)];

/// The match features a model with a free-text view reads last: the users'
/// own interests as text (shared phrases, and how rare they are in the
/// app's data), and shapes compatibility often has that a sum of the other
/// columns cannot draw (a large budget gap, styles far apart, a trait that
/// matters when both users have it).
pub const FREE_TEXT_MATCH_FEATURES: [(&str, usize); 10] = [
    ("shared_free_interests", 0),
    ("shared_interest_rarity", 0),
    ("budget_gap_large", 1),
    ("style_distance_squared", 1),
    ("style_distance_over_third", 1),
    ("openness_both", 2),
    ("conscientiousness_both", 2),
    ("extraversion_both", 2),
    ("agreeableness_both", 2),
    ("neuroticism_both", 2),
];

/// Width of [`match_features`]' row: the exact features, the semantic ones,
/// then the free-text ones.
pub const MATCH_ROW: usize =
    MATCH_FEATURES.len() + SEMANTIC_MATCH_FEATURES.len() + FREE_TEXT_MATCH_FEATURES.len();

/// Which of [`match_features`]' columns a match model reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatchLayout {
    pub space: InterestSpace,
    /// Reads [`FREE_TEXT_MATCH_FEATURES`] (its model carries an
    /// [`InterestRarity`] table).
    pub free_text: bool,
}

impl MatchLayout {
    /// The columns of [`match_features`]' row this layout reads, in order.
    pub fn columns(&self) -> Vec<usize> {
        let exact = MATCH_FEATURES.len();
        let semantic = exact + SEMANTIC_MATCH_FEATURES.len();
        let mut v: Vec<usize> = (0..exact).collect();
        if self.space == InterestSpace::Semantic {
            v.extend(exact..semantic);
        }
        if self.free_text {
            v.extend(semantic..MATCH_ROW);
        }
        v
    }

    /// The features it reads, in order, with their factor groups.
    pub fn features(&self) -> Vec<(&'static str, usize)> {
        let all: Vec<(&str, usize)> = MATCH_FEATURES
            .iter()
            .chain(&SEMANTIC_MATCH_FEATURES)
            .chain(&FREE_TEXT_MATCH_FEATURES)
            .copied()
            .collect();
        self.columns().into_iter().map(|c| all[c]).collect()
    }

    /// This layout's columns of a full row (per request: slices, no index
    /// list).
    pub fn select(&self, row: &[f32; MATCH_ROW]) -> Vec<f32> {
        let exact = MATCH_FEATURES.len();
        let semantic = exact + SEMANTIC_MATCH_FEATURES.len();
        let mut v = Vec::with_capacity(MATCH_ROW);
        v.extend_from_slice(&row[..exact]);
        if self.space == InterestSpace::Semantic {
            v.extend_from_slice(&row[exact..semantic]);
        }
        if self.free_text {
            v.extend_from_slice(&row[semantic..]);
        }
        v
    }
}

/// The match features a model in `space` without the free-text view reads,
/// in order, with their factor groups.
pub fn match_feature_list(space: InterestSpace) -> Vec<(&'static str, usize)> {
    MatchLayout {
        space,
        free_text: false,
    }
    .features()
}

/// Cosine similarity of two tag sets as 0/1 vectors; 0 when either is empty.
fn cosine(a: &TagSet, b: &TagSet) -> f32 {
    if a.is_empty() || b.is_empty() {
        0.0
    } else {
        a.intersection(b).len() as f32 / ((a.len() * b.len()) as f32).sqrt()
    }
}

/// Match features of a pair. Symmetric: swapping the users gives the same
/// vector. A model reads the columns of its [`MatchLayout`].
pub fn match_features(a: &UserFeatures, b: &UserFeatures, ctx: &MatchContext) -> [f32; MATCH_ROW] {
    // With soft profiles the tag questions are asked of the tags the
    // interests stand for, not only of their exact names.
    let (ia, ib) = (a.interest_tags(), b.interest_tags());
    let ctx_interests = match &ctx.semantic_interests {
        Some(p) => ctx.interests.union(&full_tags(p)),
        None => ctx.interests,
    };
    let shared = ia.intersection(&ib);
    let affinity_cos = if a.has_history() && b.has_history() {
        a.tag_affinity
            .iter()
            .zip(&b.tag_affinity)
            .map(|(x, y)| x * y)
            .sum()
    } else {
        0.0
    };
    // What the trip is about: the interests the request names, else the
    // destination's tags.
    let about = if ctx_interests.is_empty() {
        ctx.destination_tags
    } else {
        Some(ctx_interests)
    };
    let (ctx_fit, ctx_affinity, ctx_shared, has_ctx) = match about {
        Some(t) if !t.is_empty() => (
            (cosine(&ia, &t) + cosine(&ib, &t)) / 2.0,
            (a.affinity_to(&t) + b.affinity_to(&t)) / 2.0,
            t.intersection(&shared).len() as f32 / t.len() as f32,
            1.0,
        ),
        _ => (0.0, 0.0, 0.0, 0.0),
    };
    let sd: Vec<f32> = (0..3)
        .map(|i| (a.style_vector[i] - b.style_vector[i]).abs())
        .collect();
    let style_dist = (sd.iter().map(|d| d * d).sum::<f32>() / 3.0).sqrt();
    let shared_lang = a.languages.iter().any(|l| b.languages.contains(l));
    let interest_cos = cosine(&ia, &ib);
    let ta = a.taste_estimate();
    let tb = b.taste_estimate();
    let mut f = [0f32; MATCH_ROW];
    f[0] = ia.jaccard(&ib);
    f[1] = (shared.len() as f32 / 5.0).min(1.0);
    f[2] = interest_cos;
    f[3] = affinity_cos;
    f[4] = (a.affinity_to(&ib) + b.affinity_to(&ia)) / 2.0;
    f[5] = ta.iter().zip(&tb).map(|(x, y)| x * y).sum();
    f[6] = (a.has_history() && b.has_history()) as u8 as f32;
    f[7] = ctx_fit;
    f[8] = ctx_affinity;
    f[9] = ctx_shared;
    f[10] = has_ctx;
    f[11] = (!ctx_interests.is_empty()) as u8 as f32;
    f[12..15].copy_from_slice(&sd);
    f[15] = style_dist;
    f[16] = (a.travel_style == b.travel_style) as u8 as f32;
    f[17] = (a.budget.index() as f32 - b.budget.index() as f32).abs() / 2.0;
    f[18] = (a.preferred_duration == b.preferred_duration) as u8 as f32;
    f[19] = shared_lang as u8 as f32;
    f[20] = ((a.age as f32 - b.age as f32).abs() / 50.0).min(1.0);
    for i in 0..5 {
        f[21 + i] = (a.personality[i] - b.personality[i]).abs();
        f[26 + i] = (a.personality[i] + b.personality[i]) / 2.0;
    }
    // The same questions asked of meaning: "trekking" meets "hiking".
    let (pa, pb) = (a.interest_profile(), b.interest_profile());
    f[31] = profile_cosine(&pa, &pb);
    let about = match ctx.semantic_interests {
        Some(p) if p.iter().any(|v| *v > 0.0) => Some(p),
        _ => about.filter(|t| !t.is_empty()).map(|t| exact_profile(&t)),
    };
    if let Some(t) = about {
        f[32] = (profile_cosine(&pa, &t) + profile_cosine(&pb, &t)) / 2.0;
    }
    // The users' own words, each shared phrase weighed by its rarity.
    let (mut n_shared, mut rarity) = (0usize, 0f32);
    for p in &a.interest_phrases {
        if b.interest_phrases.binary_search(p).is_ok() {
            n_shared += 1;
            rarity += ctx.rarity.as_ref().map_or(1.0, |r| r.rarity(p));
        }
    }
    f[33] = (n_shared as f32 / 3.0).min(1.0);
    f[34] = (rarity / 2.0).min(1.0);
    f[35] = (f[17] >= 1.0) as u8 as f32;
    f[36] = style_dist * style_dist;
    f[37] = (style_dist - 1.0 / 3.0).max(0.0);
    for i in 0..5 {
        f[38 + i] = a.personality[i] * b.personality[i];
    }
    f
}

/// A soft profile over [`TAGS`]: per tag, how strongly (0–1) a list of
/// interest phrases means it.
pub type TagProfile = [f32; TAGS.len()];

/// How a model reads interests: by their exact tag names, or by their meaning
/// (soft profiles from a sentence-embedding model). Recorded with each model,
/// so the service feeds it what it was trained on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterestSpace {
    #[default]
    Exact,
    Semantic,
}

/// The tags a profile means fully.
pub fn full_tags(p: &TagProfile) -> TagSet {
    TagSet(
        p.iter()
            .enumerate()
            .filter(|(_, v)| **v >= 1.0)
            .fold(0, |m, (t, _)| m | (1 << t)),
    )
}

/// 1 on each tag of the set.
pub fn exact_profile(t: &TagSet) -> TagProfile {
    std::array::from_fn(|i| t.contains(i) as u8 as f32)
}

/// Cosine of two profiles; 0 when either is zero.
pub fn profile_cosine(a: &TagProfile, b: &TagProfile) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = (a.iter().map(|x| x * x).sum::<f32>() * b.iter().map(|x| x * x).sum::<f32>()).sqrt();
    if n > 0.0 {
        (dot / n).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The profile of a list of phrases: per tag, its strongest phrase.
pub fn combine_profiles(profiles: impl IntoIterator<Item = TagProfile>) -> TagProfile {
    let mut out = [0f32; TAGS.len()];
    for p in profiles {
        for (o, v) in out.iter_mut().zip(p) {
            *o = o.max(v);
        }
    }
    out
}

/// An interest phrase as it is looked up and cached: trimmed, lower case,
/// single spaces, underscores as spaces (`road_trips` reads "road trips").
pub fn normalize_phrase(s: &str) -> String {
    s.replace('_', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Cosine at or below which a phrase does not mean a tag at all. For
/// all-MiniLM-L6-v2, a phrase and a tag it does not mean have a median cosine
/// of 0.24 and a 90th percentile of 0.37; a phrase and the tag it stands for
/// ("street food"/food 0.65, "trekking"/hiking 0.49) a median of 0.55.
pub const SEMANTIC_FLOOR: f32 = 0.35;
/// Cosine at or above which a phrase means a tag fully.
pub const SEMANTIC_CEIL: f32 = 0.65;

/// The tag vocabulary in an embedding space: one unit vector per tag. Soft
/// profiles of phrases are read off cosines against it.
#[derive(Debug, Clone)]
pub struct TagSpace {
    tags: Vec<Vec<f32>>,
}

impl TagSpace {
    /// From the embeddings of [`TagSpace::texts`], in that order.
    pub fn new(tags: Vec<Vec<f32>>) -> Result<Self, crate::CoreError> {
        let dim = tags.first().map_or(0, Vec::len);
        if tags.len() != TAGS.len() || dim == 0 || tags.iter().any(|t| t.len() != dim) {
            return Err(crate::CoreError::invalid(
                "tag embeddings",
                format!("expected {} vectors of one width", TAGS.len()),
            ));
        }
        Ok(Self { tags })
    }

    /// The texts whose embeddings make the space: the tags as words.
    pub fn texts() -> Vec<String> {
        TAGS.iter().map(|t| normalize_phrase(t)).collect()
    }

    /// Width of the embedding vectors.
    pub fn dim(&self) -> usize {
        self.tags[0].len()
    }

    /// The soft profile of one phrase from its (unit) embedding: per tag, the
    /// cosine mapped linearly from [`SEMANTIC_FLOOR`]..[`SEMANTIC_CEIL`] to
    /// 0..1. A phrase stands for its nearest tag, which it means fully when
    /// it is related at all (above the floor); a phrase that is a tag's name
    /// stands for that tag.
    pub fn phrase_profile(&self, phrase: &str, v: &[f32]) -> TagProfile {
        let cos: Vec<f32> = self
            .tags
            .iter()
            .map(|t| t.iter().zip(v).map(|(x, y)| x * y).sum::<f32>())
            .map(|c| if c.is_finite() { c } else { -1.0 })
            .collect();
        let mut p: TagProfile = std::array::from_fn(|t| {
            ((cos[t] - SEMANTIC_FLOOR) / (SEMANTIC_CEIL - SEMANTIC_FLOOR)).clamp(0.0, 1.0)
        });
        let nearest = tag_index(&phrase.replace(' ', "_")).or_else(|| {
            (0..TAGS.len())
                .max_by(|&x, &y| cos[x].total_cmp(&cos[y]))
                .filter(|&t| p[t] > 0.0)
        });
        if let Some(t) = nearest {
            p[t] = 1.0;
        }
        p
    }
}

/// Names of the timing features, in model-input order.
pub const TIMING_FEATURES: [&str; 10] = [
    "user_share_hour_of_week",
    "user_share_week_window",
    "user_share_hour_of_day",
    "user_share_neighbour_hours",
    "user_share_same_day_type",
    "shrunk_share_hour_of_week",
    "population_share_hour_of_week",
    "population_share_hour_of_day",
    "log_sessions",
    "is_weekend",
];

/// Prior strength (in sessions) of the population pattern in the shrunk share.
pub const SHRINKAGE_SESSIONS: f32 = 20.0;

/// The population's activity pattern: share of sessions per local hour of week.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopulationActivity {
    pub hour_of_week: Vec<f32>,
}

impl PopulationActivity {
    /// Share of all users' sessions per local hour of week.
    pub fn from_users<'a>(users: impl IntoIterator<Item = &'a UserFeatures>) -> Self {
        let mut h = vec![0f32; HOURS_PER_WEEK];
        for u in users {
            for (a, b) in h.iter_mut().zip(&u.activity) {
                *a += b;
            }
        }
        let total: f32 = h.iter().sum::<f32>().max(1.0);
        h.iter_mut().for_each(|v| *v /= total);
        Self { hour_of_week: h }
    }

    pub fn hour_of_day(&self, hod: usize) -> f32 {
        (0..7).map(|d| self.hour_of_week[d * 24 + hod]).sum()
    }
}

/// Timing features of one user for each of the 168 local hours of the week
/// (row-major, 168 rows).
pub fn timing_features(u: &UserFeatures, pop: &PopulationActivity) -> Vec<f32> {
    let all: Vec<usize> = (0..HOURS_PER_WEEK).collect();
    timing_rows(u, pop, &all)
}

/// Timing features of one user for the given local hours of the week (each
/// below 168), one row per hour in that order; each row is the row of
/// [`timing_features`] for its hour, to the bit. A notification plan weighs
/// only the hours of its send window, so it needs only their rows.
pub fn timing_rows(u: &UserFeatures, pop: &PopulationActivity, hours: &[usize]) -> Vec<f32> {
    let n = u.n_activity as f32;
    let hod: Vec<f32> = (0..24)
        .map(|h| (0..7).map(|d| u.activity[d * 24 + h]).sum())
        .collect();
    let weekend_total: f32 = u.activity[120..].iter().sum();
    let weekday_total = n - weekend_total;
    let share = |c: f32, total: f32| if total > 0.0 { c / total } else { 0.0 };
    // Sums by hour of day, each added in the same order as when they were
    // computed once per row (so every value is the same to the bit), once
    // per hour of day instead of once per hour of the week.
    let weekend_hod: [f32; 24] =
        std::array::from_fn(|hd| (5..7).map(|d| u.activity[d * 24 + hd]).sum());
    let weekday_hod: [f32; 24] =
        std::array::from_fn(|hd| (0..5).map(|d| u.activity[d * 24 + hd]).sum());
    let pop_hod: [f32; 24] = std::array::from_fn(|hd| pop.hour_of_day(hd));
    let mut out = Vec::with_capacity(hours.len() * TIMING_FEATURES.len());
    for &h in hours {
        let hd = h % 24;
        let weekend = h >= 120;
        let same_type = if weekend {
            weekend_hod[hd]
        } else {
            weekday_hod[hd]
        };
        let nb = hod[(hd + 23) % 24] + hod[(hd + 1) % 24];
        let window = u.activity[(h + HOURS_PER_WEEK - 1) % HOURS_PER_WEEK]
            + u.activity[h]
            + u.activity[(h + 1) % HOURS_PER_WEEK];
        out.extend_from_slice(&[
            share(u.activity[h], n),
            share(window, n),
            share(hod[hd], n),
            share(nb, n),
            share(
                same_type,
                if weekend {
                    weekend_total
                } else {
                    weekday_total
                },
            ),
            (u.activity[h] + SHRINKAGE_SESSIONS * pop.hour_of_week[h]) / (n + SHRINKAGE_SESSIONS),
            pop.hour_of_week[h],
            pop_hod[hd],
            (1.0 + n).ln() / 5.0,
            weekend as u8 as f32,
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traits_out_of_range_are_clamped_and_non_finite_ones_read_as_the_middle() {
        assert_eq!(
            unit_interval([f32::INFINITY, f32::NAN, -3.0, 7.0, 0.25]),
            [0.5, 0.5, 0.0, 1.0, 0.25]
        );
    }
    use crate::catalogue::{builtin, Catalogue};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn profile(interests: &[&str], tz: &str) -> Profile {
        Profile {
            id: Uuid::from_u128(1),
            display_name: "x".into(),
            age: 30,
            interests: interests.iter().map(|s| s.to_string()).collect(),
            travel_style: TravelStyle::Cultural,
            style_vector: [0.4, 0.5, 0.2],
            personality: [0.5; 5],
            languages: vec!["en".into()],
            timezone: tz.into(),
            budget: Budget::Medium,
            preferred_duration: TripDuration::Week,
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    #[test]
    fn hour_of_week_uses_local_time() {
        // 2026-07-06 is a Monday; 12:00 UTC is 14:00 in Paris (CEST).
        let at = Utc.with_ymd_and_hms(2026, 7, 6, 12, 0, 0).unwrap();
        assert_eq!(hour_of_week(at, &parse_tz("Europe/Paris")), 14);
        assert_eq!(hour_of_week(at, &parse_tz("America/New_York")), 8);
        // Sunday 23:00 local is the last hour of the week.
        let sun = Utc.with_ymd_and_hms(2026, 7, 12, 21, 30, 0).unwrap();
        assert_eq!(hour_of_week(sun, &parse_tz("Europe/Paris")), 167);
    }

    #[test]
    fn history_after_as_of_is_ignored() {
        let cat = Catalogue::new(builtin());
        let p = profile(&["food"], "UTC");
        let t0 = Utc.with_ymd_and_hms(2026, 7, 6, 12, 0, 0).unwrap();
        let h = UserHistory {
            profile: Some(p.clone()),
            interactions: vec![Interaction {
                user_id: p.id,
                destination_id: cat.destinations[0].id,
                kind: InteractionKind::Visited,
                rating: None,
                occurred_at: t0,
            }],
            activity: vec![t0],
            notifications: vec![],
            consents: vec![],
        };
        let before = UserFeatures::from_history(&p, &h, &cat, t0);
        assert_eq!((before.n_interactions, before.n_activity), (0, 0));
        assert!(!before.has_consumed(0));
        let after = UserFeatures::from_history(&p, &h, &cat, t0 + chrono::Duration::seconds(1));
        assert_eq!((after.n_interactions, after.n_activity), (1, 1));
        assert!(after.has_consumed(0));
        assert!((after.tag_affinity.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
    }

    fn arb_user() -> impl Strategy<Value = UserFeatures> {
        (
            any::<u32>(),
            prop::array::uniform3(0f32..1.0),
            prop::array::uniform5(0f32..1.0),
            18u8..80,
            prop::collection::vec(0f32..5.0, TAGS.len()),
        )
            .prop_map(|(mask, style, pers, age, aff)| {
                let cat = Catalogue::new(builtin());
                let mut p = profile(&[], "Europe/Paris");
                p.style_vector = style;
                p.personality = pers;
                p.age = age;
                let mut u =
                    UserFeatures::from_history(&p, &UserHistory::default(), &cat, Utc::now());
                u.interests = TagSet(mask & ((1 << TAGS.len()) - 1));
                let pool = ["chess", "knitting", "opera", "surfing"];
                u.interest_phrases = pool
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask >> (24 + i) & 1 == 1)
                    .map(|(_, p)| p.to_string())
                    .collect();
                let n = aff.iter().map(|x| x * x).sum::<f32>().sqrt();
                if n > 0.0 {
                    u.n_interactions = 1;
                    for (a, b) in u.tag_affinity.iter_mut().zip(&aff) {
                        *a = b / n;
                    }
                }
                u
            })
    }

    #[test]
    fn semantic_columns_ask_the_exact_questions_when_only_names_are_known() {
        let cat = Catalogue::new(builtin());
        let a = UserFeatures::from_history(
            &profile(&["food", "hiking", "wine"], "UTC"),
            &UserHistory::default(),
            &cat,
            Utc::now(),
        );
        let b = UserFeatures::from_history(
            &profile(&["hiking", "beach"], "UTC"),
            &UserHistory::default(),
            &cat,
            Utc::now(),
        );
        let ctx = MatchContext {
            interests: TagSet::from_names(&["hiking", "wine"]),
            ..Default::default()
        };
        let f = match_features(&a, &b, &ctx);
        assert!((f[31] - f[2]).abs() < 1e-6, "{} vs {}", f[31], f[2]);
        assert!((f[32] - f[7]).abs() < 1e-6, "{} vs {}", f[32], f[7]);
        // A request whose interests mean hiking (a soft profile) counts as
        // context even though no exact tag name was given.
        let mut hiking = [0f32; TAGS.len()];
        hiking[tag_index("hiking").unwrap()] = 0.8;
        let ctx = MatchContext {
            semantic_interests: Some(hiking),
            ..Default::default()
        };
        let g = match_features(&a, &b, &ctx);
        assert_eq!(g[10], 0.0, "no exact context");
        assert!(g[32] > 0.3, "{}", g[32]);
        // So does the users' own meaning: give b a profile that means food
        // and wine, and their overlap with a rises.
        let mut b2 = b.clone();
        let mut p = b.interest_profile();
        p[tag_index("food").unwrap()] = 0.9;
        p[tag_index("wine").unwrap()] = 0.7;
        b2.semantic_interests = Some(p);
        assert!(match_features(&a, &b2, &ctx)[31] > g[31]);
        assert_eq!(match_feature_list(InterestSpace::Exact).len(), 31);
        assert_eq!(
            match_feature_list(InterestSpace::Semantic).len(),
            MATCH_ROW - FREE_TEXT_MATCH_FEATURES.len()
        );
    }

    #[test]
    fn shared_free_text_interests_count_by_rarity_and_layouts_pick_their_columns() {
        let cat = Catalogue::new(builtin());
        let user = |interests: &[&str]| {
            let p = profile(interests, "UTC");
            UserFeatures::from_history(&p, &UserHistory::default(), &cat, Utc::now())
        };
        let a = user(&["Opera", "  Cooking ", "food"]);
        assert_eq!(a.interest_phrases, ["cooking", "food", "opera"]);
        // Cooking is common in this population, opera rare.
        let lists: Vec<Vec<String>> = (0..100)
            .map(|i| {
                let mut v = vec![];
                if i < 60 {
                    v.push("cooking".to_string());
                }
                if i < 3 {
                    v.push("opera".into());
                }
                v
            })
            .collect();
        let rarity = std::sync::Arc::new(InterestRarity::of(lists.iter().map(|v| v.as_slice())));
        assert_eq!(rarity.users, 100);
        assert!(rarity.rarity("opera") > 3.0 * rarity.rarity("cooking"));
        assert_eq!(rarity.rarity("falconry"), 1.0);
        let ctx = MatchContext {
            rarity: Some(rarity),
            ..Default::default()
        };
        let cook = match_features(&a, &user(&["cooking"]), &ctx);
        let opera = match_features(&a, &user(&["opera"]), &ctx);
        let none = match_features(&a, &user(&["chess"]), &ctx);
        assert_eq!((cook[33], opera[33], none[33]), (1.0 / 3.0, 1.0 / 3.0, 0.0));
        assert!(opera[34] > 3.0 * cook[34] && cook[34] > 0.0 && none[34] == 0.0);
        // The layouts: exact, exact + free text, semantic + free text.
        let exact = MatchLayout {
            space: InterestSpace::Exact,
            free_text: false,
        };
        let free = MatchLayout {
            free_text: true,
            ..exact
        };
        let both = MatchLayout {
            space: InterestSpace::Semantic,
            free_text: true,
        };
        assert_eq!(exact.select(&opera), opera[..31].to_vec());
        assert_eq!(free.select(&opera)[31..], opera[33..]);
        assert_eq!(both.select(&opera), opera.to_vec());
        assert_eq!(free.features()[31].0, "shared_free_interests");
    }

    #[test]
    fn tag_space_maps_cosines_to_memberships() {
        assert!(TagSpace::new(vec![vec![1.0; 4]; 3]).is_err());
        assert!(TagSpace::new(vec![vec![]; TAGS.len()]).is_err());
        // Tag t along axis t of a 24-dimensional space.
        let space = TagSpace::new(
            (0..TAGS.len())
                .map(|t| (0..TAGS.len()).map(|i| (i == t) as u8 as f32).collect())
                .collect(),
        )
        .unwrap();
        assert_eq!(space.dim(), TAGS.len());
        let mut v = vec![0f32; TAGS.len()];
        v[0] = SEMANTIC_CEIL + 0.1; // food: fully
        v[1] = (SEMANTIC_FLOOR + SEMANTIC_CEIL) / 2.0; // history: half
        v[2] = SEMANTIC_FLOOR - 0.1; // culture: not at all
        let p = space.phrase_profile("something", &v);
        assert_eq!(p[0], 1.0);
        assert!((p[1] - 0.5).abs() < 1e-5);
        assert_eq!(p[2], 0.0);
        // The nearest tag is meant fully once the phrase is related at all.
        let mut w = vec![0f32; TAGS.len()];
        w[1] = SEMANTIC_FLOOR + 0.05;
        assert_eq!(space.phrase_profile("something", &w)[1], 1.0);
        assert_eq!(
            full_tags(&space.phrase_profile("something", &w)),
            TagSet(1 << 1)
        );
        // Unrelated to everything, or not a number: no tag at all.
        assert_eq!(space.phrase_profile("x", &[0.0; 24]), [0.0; 24]);
        assert_eq!(space.phrase_profile("x", &[f32::NAN; 24]), [0.0; 24]);
        // A tag's own name means it fully, whatever the vector says.
        let p = space.phrase_profile("road trips", &[0.0; 24]);
        assert_eq!(p[tag_index("road_trips").unwrap()], 1.0);
        assert_eq!(
            normalize_phrase("  Road_Trips \t and  MORE "),
            "road trips and more"
        );
        assert_eq!(TagSpace::texts()[23], "road trips");
        let c = combine_profiles([[0.2; 24], {
            let mut x = [0.0; 24];
            x[5] = 0.9;
            x
        }]);
        assert_eq!((c[0], c[5]), (0.2, 0.9));
        assert_eq!(profile_cosine(&[0.0; 24], &c), 0.0);
    }

    /// A user in UTC with `counts` sessions in each hour of the week.
    fn active_user(counts: &[u8]) -> UserFeatures {
        let cat = Catalogue::new(builtin());
        let p = profile(&[], "UTC");
        let mut u = UserFeatures::from_history(&p, &UserHistory::default(), &cat, Utc::now());
        u.activity = counts.iter().map(|c| *c as f32).collect();
        u.n_activity = counts.iter().map(|c| *c as u32).sum();
        u
    }

    proptest! {
        #[test]
        fn semantic_match_features_are_symmetric_finite_and_bounded(
            a in arb_user(), b in arb_user(),
            pa in prop::array::uniform24(0f32..1.0), pb in prop::array::uniform24(0f32..1.0),
            pc in prop::option::of(prop::array::uniform24(0f32..1.0)),
        ) {
            let (mut a, mut b) = (a, b);
            a.semantic_interests = Some(pa);
            b.semantic_interests = Some(pb);
            let ctx = MatchContext { semantic_interests: pc, ..Default::default() };
            let ab = match_features(&a, &b, &ctx);
            prop_assert_eq!(ab, match_features(&b, &a, &ctx));
            for v in ab {
                prop_assert!(v.is_finite() && (0.0..=1.0001).contains(&v), "{v}");
            }
        }

        #[test]
        fn match_features_are_symmetric_finite_and_bounded(a in arb_user(), b in arb_user(), ctx_mask in any::<u32>()) {
            let ctx = MatchContext { destination_tags: Some(TagSet(ctx_mask & 0xff_ffff)), interests: TagSet(ctx_mask >> 8), ..Default::default() };
            let ab = match_features(&a, &b, &ctx);
            let ba = match_features(&b, &a, &ctx);
            prop_assert_eq!(ab, ba);
            for v in ab {
                prop_assert!(v.is_finite() && (0.0..=1.0001).contains(&v), "{v}");
            }
        }

        #[test]
        fn timing_features_are_finite_and_shares_sum_to_one(counts in prop::collection::vec(0u8..5, HOURS_PER_WEEK)) {
            let u = active_user(&counts);
            let pop = PopulationActivity { hour_of_week: vec![1.0 / 168.0; 168] };
            let f = timing_features(&u, &pop);
            prop_assert_eq!(f.len(), 168 * TIMING_FEATURES.len());
            prop_assert!(f.iter().all(|v| v.is_finite()));
            let own: f32 = f.chunks(TIMING_FEATURES.len()).map(|r| r[0]).sum();
            let shrunk: f32 = f.chunks(TIMING_FEATURES.len()).map(|r| r[5]).sum();
            if u.n_activity > 0 { prop_assert!((own - 1.0).abs() < 1e-3); }
            prop_assert!((shrunk - 1.0).abs() < 1e-3);
        }

        /// The per-hour-of-day sums are those the rows computed one by one
        /// before (issue 16), to the bit, on any activity and population.
        #[test]
        fn timing_features_equal_the_row_by_row_sums(
            counts in prop::collection::vec(0u8..9, HOURS_PER_WEEK),
            pop in prop::collection::vec(0.0f32..1.0, HOURS_PER_WEEK),
        ) {
            let u = active_user(&counts);
            let pop = PopulationActivity { hour_of_week: pop };
            let f = timing_features(&u, &pop);
            for h in 0..HOURS_PER_WEEK {
                let hd = h % 24;
                let same_type: f32 = if h >= 120 {
                    (5..7).map(|d| u.activity[d * 24 + hd]).sum()
                } else {
                    (0..5).map(|d| u.activity[d * 24 + hd]).sum()
                };
                let total = if h >= 120 {
                    u.activity[120..].iter().sum::<f32>()
                } else {
                    u.n_activity as f32 - u.activity[120..].iter().sum::<f32>()
                };
                let share = if total > 0.0 { same_type / total } else { 0.0 };
                let row = &f[h * TIMING_FEATURES.len()..(h + 1) * TIMING_FEATURES.len()];
                prop_assert_eq!(row[4].to_bits(), share.to_bits());
                prop_assert_eq!(row[7].to_bits(), pop.hour_of_day(hd).to_bits());
            }
        }

        /// Rows for some hours (any order, repeats allowed) are those hours'
        /// rows of all 168, to the bit.
        #[test]
        fn timing_rows_are_the_rows_of_those_hours(
            counts in prop::collection::vec(0u8..9, HOURS_PER_WEEK),
            pop in prop::collection::vec(0.0f32..1.0, HOURS_PER_WEEK),
            hours in prop::collection::vec(0usize..HOURS_PER_WEEK, 0..40),
        ) {
            let u = active_user(&counts);
            let pop = PopulationActivity { hour_of_week: pop };
            let all = timing_features(&u, &pop);
            let some = timing_rows(&u, &pop, &hours);
            let w = TIMING_FEATURES.len();
            prop_assert_eq!(some.len(), hours.len() * w);
            for (i, &h) in hours.iter().enumerate() {
                let want: Vec<u32> = all[h * w..(h + 1) * w].iter().map(|v| v.to_bits()).collect();
                let got: Vec<u32> = some[i * w..(i + 1) * w].iter().map(|v| v.to_bits()).collect();
                prop_assert_eq!(got, want, "hour {}", h);
            }
        }
    }
}
