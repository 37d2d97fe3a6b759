//! MovieLens in RecBole's atomic-file format (`.inter`, `.user`): parsing only,
//! from text the caller read. Used as real-world activity data for the
//! notification-timing evaluation (ratings as app sessions).

use crate::TrainError;
use std::collections::HashMap;

/// One rating.
#[derive(Debug, Clone, PartialEq)]
pub struct Rating {
    pub user: String,
    pub item: String,
    pub rating: f32,
    /// Unix seconds.
    pub timestamp: i64,
}

fn columns(header: &str) -> Vec<String> {
    header
        .trim_end_matches('\r')
        .split('\t')
        .map(|c| c.split(':').next().unwrap_or("").to_string())
        .collect()
}

/// Parse a `.inter` file (`user_id:token  item_id:token  rating:float  timestamp:float`).
pub fn parse_inter(text: &str) -> Result<Vec<Rating>, TrainError> {
    let mut lines = text.lines();
    let cols = columns(lines.next().unwrap_or(""));
    let at = |name: &str| {
        cols.iter()
            .position(|c| c == name)
            .ok_or_else(|| TrainError::invalid("header", format!("no {name} column")))
    };
    let (u, i, r, t) = (
        at("user_id")?,
        at("item_id")?,
        at("rating")?,
        at("timestamp")?,
    );
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = |field: &str| {
            TrainError::invalid(format!("line {} {field}", n + 2), "missing or not a number")
        };
        out.push(Rating {
            user: f.get(u).ok_or_else(|| bad("user_id"))?.to_string(),
            item: f.get(i).ok_or_else(|| bad("item_id"))?.to_string(),
            rating: f
                .get(r)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("rating"))?,
            timestamp: f
                .get(t)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| bad("timestamp"))? as i64,
        });
    }
    Ok(out)
}

/// Parse a `.user` file into user → zip code (empty when the file has none).
pub fn parse_user_zips(text: &str) -> HashMap<String, String> {
    let mut lines = text.lines();
    let cols = columns(lines.next().unwrap_or(""));
    let (Some(u), Some(z)) = (
        cols.iter().position(|c| c == "user_id"),
        cols.iter().position(|c| c == "zip_code"),
    ) else {
        return HashMap::new();
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.trim_end_matches('\r').split('\t').collect();
            Some((f.get(u)?.to_string(), f.get(z)?.to_string()))
        })
        .collect()
}

/// An approximate US time zone from a ZIP code's first digit (0–4 Eastern,
/// 5–7 Central, 8 Mountain, 9 Pacific); `UTC` for anything else.
pub fn zip_timezone(zip: &str) -> &'static str {
    match zip.trim().chars().next() {
        Some('0'..='4') => "America/New_York",
        Some('5'..='7') => "America/Chicago",
        Some('8') => "America/Denver",
        Some('9') => "America/Los_Angeles",
        _ => "UTC",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recbole_atomic_files_with_crlf() {
        let inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\r\n1m_1\tToy Story (1995)\t5\t978300760\r\n";
        let r = parse_inter(inter).unwrap();
        assert_eq!(
            r,
            vec![Rating {
                user: "1m_1".into(),
                item: "Toy Story (1995)".into(),
                rating: 5.0,
                timestamp: 978300760
            }]
        );
        assert!(parse_inter(
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\nx\ty\tz\t1\n"
        )
        .is_err());
        let zips =
            parse_user_zips("user_id:token\tage:float\tzip_code:token\r\n1m_1\t1\t48067\r\n");
        assert_eq!(zips["1m_1"], "48067");
        assert_eq!(zip_timezone("48067"), "America/New_York");
        assert_eq!(zip_timezone("94110"), "America/Los_Angeles");
        assert_eq!(zip_timezone("T8N 3Z5"), "UTC");
    }
}

/// MovieLens as app data, so the service's own training and serving run on it:
/// users become profiles (age, a time zone from the ZIP code, neutral traits),
/// movies become destinations (genres as tags; neutral cost and trip length),
/// ratings of at least `min_rating` become `rated` interactions, and every rating
/// an app session (at most one per user and hour).
pub fn to_dataset(
    ratings: &[Rating],
    items_text: &str,
    users_text: &str,
    min_rating: f32,
) -> ml_core::types::Dataset {
    use chrono::{TimeZone, Utc};
    use ml_core::types::*;
    let (titles, genres) = parse_items(items_text);
    let (ages, zips) = parse_users(users_text);
    let mut items: Vec<&str> = ratings.iter().map(|r| r.item.as_str()).collect();
    items.sort_unstable();
    items.dedup();
    let name_of = |item: &str| -> String {
        match titles.get(item) {
            // Numeric ids (MovieLens-100k) are not names: "Title (#id)" stays unique.
            Some(t) if item.chars().all(|c| c.is_ascii_digit()) => format!("{t} (#{item})"),
            _ => item.to_string(),
        }
    };
    let destinations: Vec<Destination> = items
        .iter()
        .map(|i| {
            let name = name_of(i);
            Destination {
                id: ml_core::catalogue::destination_id(&name),
                name,
                country: String::new(),
                tags: genres.get(*i).cloned().unwrap_or_default(),
                cost_level: Budget::Medium,
                trip_lengths: vec![TripDuration::Week],
                latitude: 0.0,
                longitude: 0.0,
            }
        })
        .collect();
    let dest_id: HashMap<&str, uuid::Uuid> = items
        .iter()
        .zip(&destinations)
        .map(|(i, d)| (*i, d.id))
        .collect();
    let user_id = |u: &str| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, u.as_bytes());
    let at = |t: i64| Utc.timestamp_opt(t, 0).single().unwrap_or_default();
    let mut first: HashMap<&str, i64> = HashMap::new();
    for r in ratings {
        let f = first.entry(r.user.as_str()).or_insert(r.timestamp);
        *f = (*f).min(r.timestamp);
    }
    let mut users: Vec<&str> = first.keys().copied().collect();
    users.sort_unstable();
    let profiles = users
        .iter()
        .map(|u| Profile {
            id: user_id(u),
            display_name: u.to_string(),
            age: ages.get(*u).copied().unwrap_or(30).clamp(13, 120),
            interests: vec![],
            travel_style: TravelStyle::Comfort,
            style_vector: [0.5; 3],
            personality: [0.5; 5],
            languages: vec!["en".into()],
            timezone: zip_timezone(zips.get(*u).map(String::as_str).unwrap_or("")).into(),
            budget: Budget::Medium,
            preferred_duration: TripDuration::Week,
            created_at: at(first[u]),
        })
        .collect();
    let interactions = ratings
        .iter()
        .filter(|r| r.rating >= min_rating)
        .map(|r| Interaction {
            user_id: user_id(&r.user),
            destination_id: dest_id[r.item.as_str()],
            kind: InteractionKind::Rated,
            rating: Some(r.rating.clamp(1.0, 5.0)),
            occurred_at: at(r.timestamp),
        })
        .collect();
    let mut sessions: Vec<(&str, i64)> = ratings
        .iter()
        .map(|r| (r.user.as_str(), r.timestamp / 3600))
        .collect();
    sessions.sort_unstable();
    sessions.dedup();
    let activity = sessions
        .into_iter()
        .map(|(u, h)| ActivityEvent {
            user_id: user_id(u),
            occurred_at: at(h * 3600 + 1800),
        })
        .collect();
    Dataset {
        profiles,
        destinations,
        interactions,
        activity,
        ..Default::default()
    }
}

/// Item id → (title, genres) from a `.item` file.
fn parse_items(text: &str) -> (HashMap<String, String>, HashMap<String, Vec<String>>) {
    let mut lines = text.lines();
    let cols = columns(lines.next().unwrap_or(""));
    let pos = |n: &str| cols.iter().position(|c| c == n);
    let (id, title, genre) = (
        pos("item_id"),
        pos("movie_title"),
        pos("class").or(pos("genre")),
    );
    let (mut titles, mut genres) = (HashMap::new(), HashMap::new());
    for l in lines {
        let f: Vec<&str> = l.trim_end_matches('\r').split('\t').collect();
        let Some(i) = id.and_then(|c| f.get(c)) else {
            continue;
        };
        if let Some(t) = title.and_then(|c| f.get(c)) {
            titles.insert(i.to_string(), t.to_string());
        }
        if let Some(g) = genre.and_then(|c| f.get(c)) {
            genres.insert(
                i.to_string(),
                g.split_whitespace().map(|x| x.to_lowercase()).collect(),
            );
        }
    }
    (titles, genres)
}

/// User → (age, zip) from a `.user` file.
fn parse_users(text: &str) -> (HashMap<String, u8>, HashMap<String, String>) {
    let mut lines = text.lines();
    let cols = columns(lines.next().unwrap_or(""));
    let age = cols.iter().position(|c| c == "age");
    let ages = lines
        .filter_map(|l| {
            let f: Vec<&str> = l.trim_end_matches('\r').split('\t').collect();
            let a: f64 = f.get(age?)?.parse().ok()?;
            Some((f.first()?.to_string(), a.clamp(0.0, 255.0) as u8))
        })
        .collect();
    (ages, parse_user_zips(text))
}

#[cfg(test)]
mod import_tests {
    use super::*;

    #[test]
    fn movielens_becomes_app_data() {
        let inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t881250949\n1\t20\t2\t881250950\n2\t10\t4\t881260000\n";
        let items = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tToy Story\t1995\tAnimation Comedy\n20\tHeat\t1995\tAction\n";
        let users = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n1\t24\tM\tx\t85711\n2\t7\tF\ty\t10001\n";
        let d = to_dataset(&parse_inter(inter).unwrap(), items, users, 3.0);
        assert_eq!(d.profiles.len(), 2);
        assert_eq!(
            d.profiles[1].age, 13,
            "ages are clamped to the schema's range"
        );
        assert_eq!(d.profiles[0].timezone, "America/Denver");
        let names: Vec<&str> = d.destinations.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["Toy Story (#10)", "Heat (#20)"]);
        assert_eq!(d.destinations[0].tags, ["animation", "comedy"]);
        assert_eq!(d.interactions.len(), 2, "the rating of 2 is not a positive");
        assert_eq!(d.activity.len(), 2, "one session per user and hour");
    }
}
