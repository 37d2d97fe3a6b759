//! MovieLens in RecBole's atomic-file format (`.inter`, `.user`): parsing only,
//! from text the caller read. Used as real-world activity data for the
//! notification-timing evaluation (ratings as app sessions).

use crate::CoreError;
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
pub fn parse_inter(text: &str) -> Result<Vec<Rating>, CoreError> {
    let mut lines = text.lines();
    let cols = columns(lines.next().unwrap_or(""));
    let at = |name: &str| {
        cols.iter()
            .position(|c| c == name)
            .ok_or_else(|| CoreError::invalid("header", format!("no {name} column")))
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
            CoreError::invalid(format!("line {} {field}", n + 2), "missing or not a number")
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
