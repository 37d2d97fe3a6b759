//! The app-data types: profiles, destinations, interactions, match outcomes,
//! activity events and the notification log, plus the small enums the API shares.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The interest and destination-tag vocabulary. Profiles' interests and
/// destinations' tags are drawn from it, so the two can be compared directly.
pub const TAGS: [&str; 24] = [
    "food",
    "history",
    "culture",
    "beach",
    "nature",
    "architecture",
    "photography",
    "nightlife",
    "hiking",
    "islands",
    "adventure",
    "relaxation",
    "music",
    "mountains",
    "wildlife",
    "shopping",
    "art",
    "museums",
    "diving",
    "festivals",
    "skiing",
    "wine",
    "cycling",
    "road_trips",
];

/// Index of a tag in [`TAGS`], if it is one.
pub fn tag_index(tag: &str) -> Option<usize> {
    let t = tag.trim().to_ascii_lowercase();
    TAGS.iter().position(|x| *x == t)
}

/// A set of tags as a bit mask over [`TAGS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagSet(pub u32);

impl TagSet {
    /// The tags of `names` that belong to the vocabulary; unknown names are ignored.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Self {
        let mut m = 0u32;
        for n in names {
            if let Some(i) = tag_index(n.as_ref()) {
                m |= 1 << i;
            }
        }
        TagSet(m)
    }
    pub fn contains(&self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }
    pub fn len(&self) -> u32 {
        self.0.count_ones()
    }
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
    pub fn intersection(&self, o: &TagSet) -> TagSet {
        TagSet(self.0 & o.0)
    }
    pub fn union(&self, o: &TagSet) -> TagSet {
        TagSet(self.0 | o.0)
    }
    /// Jaccard similarity; 0 when both are empty.
    pub fn jaccard(&self, o: &TagSet) -> f32 {
        let u = self.union(o).len();
        if u == 0 {
            0.0
        } else {
            self.intersection(o).len() as f32 / u as f32
        }
    }
    /// Tag names in vocabulary order.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter_names().collect()
    }
    /// Tag names in vocabulary order, without collecting them.
    pub fn iter_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        (0..TAGS.len())
            .filter(|i| self.contains(*i))
            .map(|i| TAGS[i])
    }
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(&self) -> &'static str { match self { $($name::$variant => $s),+ } }
            pub fn index(&self) -> usize { *self as usize }
        }
        impl std::str::FromStr for $name {
            type Err = crate::CoreError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($s => Ok($name::$variant),)+
                    _ => Err(crate::CoreError::invalid(stringify!($name), format!("unknown value {s:?}"))) }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

str_enum!(
    /// Cost level of a destination, and a traveller's budget.
    Budget { Low => "low", Medium => "medium", High => "high" }
);
str_enum!(
    /// Typical length of a trip.
    TripDuration { Weekend => "weekend", Week => "week", Month => "month" }
);
str_enum!(
    /// A traveller's dominant style (derived from the continuous style vector).
    TravelStyle {
        Backpacker => "backpacker",
        Adventurer => "adventurer",
        Cultural => "cultural",
        Comfort => "comfort",
        Luxury => "luxury",
        Relaxer => "relaxer",
    }
);
str_enum!(
    /// A notification channel.
    Channel { Push => "push", Email => "email", Sms => "sms" }
);
str_enum!(
    /// What a notification is about.
    NotificationType { MatchFound => "match_found", Message => "message", Reminder => "reminder" }
);
str_enum!(
    /// How soon a notification should reach the user.
    Urgency { Low => "low", Medium => "medium", High => "high" }
);
str_enum!(
    /// What a user did with a destination, weakest to strongest.
    InteractionKind {
        Viewed => "viewed",
        Saved => "saved",
        Booked => "booked",
        Visited => "visited",
        Rated => "rated",
    }
);

/// A user profile: what the app knows about a traveller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub id: Uuid,
    pub display_name: String,
    pub age: u8,
    /// Declared interests (vocabulary tags).
    pub interests: Vec<String>,
    pub travel_style: TravelStyle,
    /// Pace (slow 0 .. fast 1), comfort (rough 0 .. plush 1), spontaneity
    /// (planner 0 .. spontaneous 1): the continuous style behind `travel_style`.
    pub style_vector: [f32; 3],
    /// Big Five: openness, conscientiousness, extraversion, agreeableness,
    /// neuroticism, each in 0..1.
    pub personality: [f32; 5],
    pub languages: Vec<String>,
    /// IANA time-zone name, e.g. `Europe/Paris`.
    pub timezone: String,
    pub budget: Budget,
    pub preferred_duration: TripDuration,
    pub created_at: DateTime<Utc>,
}

/// A destination of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub id: Uuid,
    pub name: String,
    pub country: String,
    pub tags: Vec<String>,
    pub cost_level: Budget,
    pub trip_lengths: Vec<TripDuration>,
    pub latitude: f64,
    pub longitude: f64,
}

/// A user's action on a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub user_id: Uuid,
    pub destination_id: Uuid,
    pub kind: InteractionKind,
    /// 1..5 for `rated`, else none.
    pub rating: Option<f32>,
    pub occurred_at: DateTime<Utc>,
}

/// The outcome of a suggested pairing of two travellers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchOutcome {
    pub user_a: Uuid,
    pub user_b: Uuid,
    pub destination_id: Option<Uuid>,
    pub trip_start: Option<NaiveDate>,
    /// Interests the trip is about, as proposed (may be empty).
    #[serde(default)]
    pub trip_interests: Vec<String>,
    /// Both accepted and travelled together.
    pub matched: bool,
    pub decided_at: DateTime<Utc>,
    /// The generator's true probability of a match (demo data only): the ceiling
    /// no model can beat, used by offline evaluation. Never a model input.
    pub true_probability: Option<f32>,
}

/// One app session start (the activity signal for notification timing).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActivityEvent {
    pub user_id: Uuid,
    pub occurred_at: DateTime<Utc>,
}

/// One sent notification and whether it was opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub user_id: Uuid,
    pub notification_type: NotificationType,
    pub channel: Channel,
    pub sent_at: DateTime<Utc>,
    pub opened_at: Option<DateTime<Utc>>,
}

/// Whether a user agreed to be notified on a channel (the app's
/// `channel_consent` table: one row per user and channel). A channel without
/// a row is unknown, and the service's policy decides
/// (`DEFAULT_CHANNELS`: push only unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelConsent {
    pub user_id: Uuid,
    pub channel: Channel,
    pub granted: bool,
}

/// Everything the app knows about one user, as the feature code reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserHistory {
    pub profile: Option<Profile>,
    pub interactions: Vec<Interaction>,
    pub activity: Vec<DateTime<Utc>>,
    pub notifications: Vec<NotificationRecord>,
    /// What the user agreed to per channel (no entry: unknown).
    #[serde(default)]
    pub consents: Vec<ChannelConsent>,
}

/// The whole app dataset (used by the generator and by training).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub profiles: Vec<Profile>,
    pub destinations: Vec<Destination>,
    pub interactions: Vec<Interaction>,
    pub matches: Vec<MatchOutcome>,
    pub activity: Vec<ActivityEvent>,
    pub notifications: Vec<NotificationRecord>,
    pub consents: Vec<ChannelConsent>,
}

impl Dataset {
    /// One user's channel consent as a store's history returns it: a row
    /// per channel answered, in the channels' name order.
    pub fn consents_of(&self, user: Uuid) -> Vec<ChannelConsent> {
        let mut v: Vec<ChannelConsent> = self
            .consents
            .iter()
            .filter(|c| c.user_id == user)
            .copied()
            .collect();
        v.sort_by_key(|c| c.channel.as_str());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagset_ignores_unknown_and_is_case_insensitive() {
        let t = TagSet::from_names(&["Food", "art", "unknown"]);
        assert_eq!(t.names(), vec!["food", "art"]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn jaccard_bounds() {
        let a = TagSet::from_names(&["food", "art"]);
        let b = TagSet::from_names(&["food", "beach"]);
        assert!((a.jaccard(&b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(TagSet::default().jaccard(&TagSet::default()), 0.0);
        assert_eq!(a.jaccard(&a), 1.0);
    }

    #[test]
    fn enums_round_trip_through_strings() {
        for b in Budget::ALL {
            assert_eq!(b.as_str().parse::<Budget>().unwrap(), *b);
        }
        assert!("huge".parse::<Budget>().is_err());
        assert_eq!(
            serde_json::to_string(&NotificationType::MatchFound).unwrap(),
            "\"match_found\""
        );
    }
}
