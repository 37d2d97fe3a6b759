//! Any bytes as each request body of the API (`ml_api::parse_json`, then
//! `validate`), as the HTTP extractor and the v2 decoder read them: never a
//! panic; a refusal names a field (or `body`) and stays short (no echo of
//! the input); and an accepted request survives a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ml_api::{parse_json, ApiError, MatchRequest, NotifyRequest, RecommendRequest};
use serde::{de::DeserializeOwned, Serialize};

fn check<T>(data: &[u8], validate: impl Fn(&T) -> Result<(), ApiError>)
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    match parse_json::<T>(data).and_then(|r| validate(&r).map(|()| r)) {
        Ok(r) => {
            let again: T = parse_json(&serde_json::to_vec(&r).unwrap()).unwrap();
            assert_eq!(again, r);
            assert!(validate(&again).is_ok());
        }
        Err(ApiError::Invalid { field, reason }) => {
            assert!(!field.is_empty());
            // Field paths and reasons are bounded: long strings in the input
            // are never echoed whole (parse_json clips paths to MAX_ECHO
            // characters and reasons to twice that; the checks of `validate`
            // quote at most a date or a count).
            assert!(field.chars().count() <= ml_api::MAX_ECHO + 1, "{field}");
            assert!(reason.chars().count() <= 2 * ml_api::MAX_ECHO + 1, "{reason}");
        }
        Err(ApiError::MalformedJson { .. }) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    check::<MatchRequest>(data, MatchRequest::validate);
    check::<RecommendRequest>(data, RecommendRequest::validate);
    check::<NotifyRequest>(data, |_| Ok(()));
});
