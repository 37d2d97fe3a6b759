//! The key layout, the same in Redis and in process:
//!
//! | key | value |
//! | --- | --- |
//! | `{prefix}:f{schema}:{catalogue}:{{{user}}}` | a user's features ([`crate::codec`]) |
//! | `{prefix}:p:{endpoint}:{model}:{version}:{{{user}}}:{request}` | a response (JSON) |
//!
//! `schema` is [`ml_core::features::FEATURE_SCHEMA_VERSION`], `catalogue` a
//! fingerprint of the destination catalogue (features hold catalogue indices),
//! `version` the model version that answered, and `request` a digest of the
//! normalized request. The user id sits in braces, Redis Cluster's hash tag,
//! so every key of one user lands in one slot; a new feature schema, catalogue
//! or model version reads different keys and so never reads stale bytes.

use uuid::Uuid;

/// The key of a user's features.
pub fn features(prefix: &str, catalogue: &str, user: Uuid) -> String {
    format!(
        "{prefix}:f{}:{catalogue}:{{{user}}}",
        ml_core::features::FEATURE_SCHEMA_VERSION
    )
}

/// The key of a cached response.
pub fn prediction(
    prefix: &str,
    endpoint: &str,
    model: &str,
    version: u64,
    user: Uuid,
    request_digest: &str,
) -> String {
    format!("{prefix}:p:{endpoint}:{model}:{version}:{{{user}}}:{request_digest}")
}

/// The hash tag of a key (what Redis Cluster hashes): the text inside the first
/// `{…}`, or the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_user_has_the_users_hash_tag() {
        let u = Uuid::new_v4();
        let f = features("mls", "abcd", u);
        let p = prediction("mls", "match", "travel_match", 3, u, "00ff");
        assert_eq!(hash_tag(&f), u.to_string());
        assert_eq!(hash_tag(&p), u.to_string());
        assert!(f.contains(&format!(":f{}:", ml_core::features::FEATURE_SCHEMA_VERSION)));
    }

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag("a{b}c"), "b");
        assert_eq!(hash_tag("a{}c"), "a{}c");
        assert_eq!(hash_tag("plain"), "plain");
    }
}
