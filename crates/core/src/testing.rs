//! A user for the unit tests of this crate: two declared interests (food,
//! art), a medium budget, week-long trips, no history yet.

use crate::catalogue::{builtin, Catalogue};
use crate::features::UserFeatures;
use crate::types::*;
use chrono::Utc;

/// The test user, in time zone `tz`, as of now.
pub(crate) fn user(tz: &str) -> UserFeatures {
    let p = Profile {
        id: uuid::Uuid::from_u128(7),
        display_name: "u".into(),
        age: 30,
        interests: vec!["food".into(), "art".into()],
        travel_style: TravelStyle::Cultural,
        style_vector: [0.5; 3],
        personality: [0.5; 5],
        languages: vec!["en".into()],
        timezone: tz.into(),
        budget: Budget::Medium,
        preferred_duration: TripDuration::Week,
        created_at: Utc::now(),
    };
    UserFeatures::from_history(
        &p,
        &UserHistory::default(),
        &Catalogue::new(builtin()),
        Utc::now(),
    )
}
