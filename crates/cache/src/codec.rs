//! The binary encoding of [`UserFeatures`] in a cache: one magic byte, the
//! feature-schema version (u16, little-endian), then the struct in `postcard`
//! (varint integers, raw floats): under 1 KB per user, most of it the 168-hour
//! activity histogram. A value written under another schema version is not
//! decoded, so a schema change never reads stale bytes.

use ml_core::features::{UserFeatures, FEATURE_SCHEMA_VERSION};

const MAGIC: u8 = b'F';

/// Encode a user's features.
pub fn encode(f: &UserFeatures) -> Vec<u8> {
    let mut out = vec![MAGIC];
    out.extend(FEATURE_SCHEMA_VERSION.to_le_bytes());
    // Serializing plain data into a Vec cannot fail.
    out.extend(postcard::to_stdvec(f).unwrap_or_default());
    out
}

/// Decode features written by [`encode`] under this schema version; anything
/// else (another version, truncated or foreign bytes) is `None`.
pub fn decode(b: &[u8]) -> Option<UserFeatures> {
    let (head, body) = (b.get(..3)?, b.get(3..)?);
    if head[0] != MAGIC || u16::from_le_bytes([head[1], head[2]]) != FEATURE_SCHEMA_VERSION {
        return None;
    }
    postcard::from_bytes(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ml_core::catalogue::Catalogue;
    use ml_train::generator::{generate, GeneratorConfig};
    use ml_train::train::TrainingData;
    use proptest::prelude::*;

    fn sample() -> Vec<UserFeatures> {
        let d = generate(&GeneratorConfig {
            users: 50,
            seed: 9,
            ..Default::default()
        });
        let td = TrainingData::new(&d);
        let _ = Catalogue::new(d.destinations.clone());
        let mut v: Vec<_> = td.user_features(chrono::Utc::now()).into_values().collect();
        v.sort_by_key(|f| f.user_id);
        v
    }

    #[test]
    fn features_round_trip_and_are_compact() {
        for f in sample() {
            let b = encode(&f);
            assert_eq!(decode(&b).as_ref(), Some(&f));
            assert!(b.len() < 2048, "{} bytes", b.len());
        }
    }

    #[test]
    fn another_schema_version_or_damage_is_a_miss() {
        let f = &sample()[0];
        let mut b = encode(f);
        b[1] = b[1].wrapping_add(1);
        assert_eq!(decode(&b), None);
        let b = encode(f);
        assert_eq!(decode(&b[..b.len() / 2]), None);
        assert_eq!(decode(b"F"), None);
        assert_eq!(decode(b""), None);
    }

    /// A user written out field by field: adding a field to `UserFeatures`
    /// breaks this (a compile error), changing a field's type changes the
    /// pinned bytes. Either way the fix is to bump `FEATURE_SCHEMA_VERSION`, so
    /// caches written by the old code are not read, and to update this test.
    fn fixed() -> UserFeatures {
        use ml_core::types::*;
        UserFeatures {
            user_id: uuid::Uuid::from_u128(7),
            interests: TagSet::from_names(&["beach", "food"]),
            style_vector: [0.5, 0.25, 0.25],
            travel_style: TravelStyle::Adventurer,
            personality: [0.1, 0.2, 0.3, 0.4, 0.5],
            languages: vec!["en".into()],
            budget: Budget::Medium,
            preferred_duration: TripDuration::Week,
            age: 31,
            timezone: "Europe/Paris".into(),
            tag_affinity: [0.0; ml_core::types::TAGS.len()],
            n_interactions: 3,
            consumed: vec![4],
            engaged: vec![4, 9],
            activity: vec![0.0; ml_core::features::HOURS_PER_WEEK],
            n_activity: 0,
            channel_sent: [1, 0, 0],
            channel_opened: [1, 0, 0],
            semantic_interests: Some(std::array::from_fn(|t| match t {
                0 => 0.5,
                3 => 1.0,
                _ => 0.0,
            })),
            consent: [Some(true), None, Some(false)],
            recent_sends: vec![
                chrono::DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default()
            ],
            interest_phrases: vec!["opera".into(), "surfing".into()],
        }
    }

    #[test]
    fn the_layout_is_pinned_to_the_schema_version() {
        let b = encode(&fixed());
        let sum: u32 = b.iter().map(|x| *x as u32).sum();
        assert_eq!(
            (FEATURE_SCHEMA_VERSION, b.len(), sum),
            (3, 996, 7350),
            "the encoding of UserFeatures changed: bump FEATURE_SCHEMA_VERSION and update this test"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&b);
        }
    }
}
