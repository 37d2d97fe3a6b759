//! The destination catalogue: a curated table of real places the project keeps
//! (`data/destinations.csv`), parsed once. Ids are UUIDv5 of the name, so they
//! are stable across runs and machines.

use crate::types::{Budget, Destination, TripDuration};
use crate::CoreError;
use uuid::Uuid;

const CSV: &str = include_str!("../data/destinations.csv");

/// The namespace for destination ids (UUIDv5 of the destination's name).
pub const DESTINATION_NAMESPACE: Uuid = Uuid::from_u128(0x6d6c_2d73_6572_7669_6365_2d64_6573_7431);

/// The stable id of a destination name.
pub fn destination_id(name: &str) -> Uuid {
    Uuid::new_v5(&DESTINATION_NAMESPACE, name.as_bytes())
}

/// Parse the built-in catalogue.
pub fn builtin() -> Vec<Destination> {
    parse(CSV).expect("the built-in catalogue is valid (checked by a unit test)")
}

/// Parse a catalogue CSV (`name,country,lat,lon,cost,tags,trip_lengths`, lists
/// separated by `;`). Errors name the line and field.
pub fn parse(csv: &str) -> Result<Vec<Destination>, CoreError> {
    let mut out = Vec::new();
    for (i, line) in csv.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let at = |field: &str| format!("line {} {field}", i + 1);
        if f.len() != 7 {
            return Err(CoreError::invalid(at("row"), "expected 7 columns"));
        }
        let num = |s: &str, field: &str| {
            s.parse::<f64>()
                .map_err(|_| CoreError::invalid(at(field), "not a number"))
        };
        let tags: Vec<String> = f[5].split(';').map(str::to_string).collect();
        for t in &tags {
            if crate::types::tag_index(t).is_none() {
                return Err(CoreError::invalid(at("tags"), format!("unknown tag {t}")));
            }
        }
        let trip_lengths = f[6]
            .split(';')
            .map(|s| s.parse::<TripDuration>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CoreError::invalid(at("trip_lengths"), "unknown duration"))?;
        out.push(Destination {
            id: destination_id(f[0]),
            name: f[0].to_string(),
            country: f[1].to_string(),
            latitude: num(f[2], "lat")?,
            longitude: num(f[3], "lon")?,
            cost_level: f[4]
                .parse::<Budget>()
                .map_err(|_| CoreError::invalid(at("cost"), "unknown cost level"))?,
            tags,
            trip_lengths,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_is_valid_and_large_enough() {
        let c = parse(CSV).unwrap();
        assert!(c.len() >= 200, "only {} destinations", c.len());
        let mut ids: Vec<_> = c.iter().map(|d| d.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), c.len(), "destination names must be unique");
        for d in &c {
            assert!((-90.0..=90.0).contains(&d.latitude), "{}", d.name);
            assert!((-180.0..=180.0).contains(&d.longitude), "{}", d.name);
            assert!(!d.tags.is_empty() && !d.trip_lengths.is_empty());
        }
    }

    #[test]
    fn parse_reports_line_and_field() {
        let err = parse("h\nParis,France,x,2,high,food,week").unwrap_err();
        assert_eq!(err, CoreError::invalid("line 2 lat", "not a number"));
    }
}

/// The catalogue with the lookups the feature code needs.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub destinations: Vec<Destination>,
    pub tags: Vec<crate::types::TagSet>,
    by_id: std::collections::HashMap<Uuid, usize>,
    by_name: std::collections::HashMap<String, usize>,
}

impl Catalogue {
    pub fn new(destinations: Vec<Destination>) -> Self {
        let tags = destinations
            .iter()
            .map(|d| crate::types::TagSet::from_names(&d.tags))
            .collect();
        let by_id = destinations
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id, i))
            .collect();
        let by_name = destinations
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.to_lowercase(), i))
            .collect();
        Self {
            destinations,
            tags,
            by_id,
            by_name,
        }
    }
    pub fn index_of(&self, id: &Uuid) -> Option<usize> {
        self.by_id.get(id).copied()
    }
    /// Case-insensitive lookup by name.
    pub fn find_by_name(&self, name: &str) -> Option<usize> {
        self.by_name.get(&name.trim().to_lowercase()).copied()
    }
    pub fn len(&self) -> usize {
        self.destinations.len()
    }
    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }
}
