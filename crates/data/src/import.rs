//! Validated import of app data from CSV or JSON Lines: one file per table,
//! named after it (`profiles.csv`, `interactions.jsonl`, …), with the table's
//! column names (see `migrations/postgres`). Every row is checked, field by
//! field, and every problem is reported with its file, line and field; the
//! caller writes nothing unless there are none, and then writes everything in
//! one transaction.
//!
//! Cells: lists are JSON arrays in JSON Lines, and in CSV either `a;b;c` or a
//! Postgres array literal `{a,b,c}` (what `COPY … CSV` and Supabase's table
//! export write); times are RFC 3339 or Postgres's `2024-05-01 10:00:00+00`;
//! an empty CSV cell is null.

use ml_core::types::*;
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// The tables an import may hold, in the order they are read (parents first).
pub const TABLES: [&str; 7] = [
    "destinations",
    "profiles",
    "interactions",
    "match_outcomes",
    "activity_events",
    "notification_log",
    "channel_consent",
];

/// Longest text accepted in a name-like field, in characters.
const MAX_TEXT: usize = 200;
/// Most items in a list field.
const MAX_ITEMS: usize = 64;

/// The file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    /// The format a file name's extension says (`.csv`, `.jsonl`, `.ndjson`).
    pub fn of(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// One problem with one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub file: String,
    /// 1-based line of the file (CSV: the header is line 1).
    pub line: usize,
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.field, self.reason
        )
    }
}

/// What was read, and every problem found.
#[derive(Debug, Default)]
pub struct Import {
    pub data: Dataset,
    pub errors: Vec<RowError>,
    /// For each table: its file and each row's line, in row order.
    lines: HashMap<&'static str, (String, Vec<usize>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    List(Vec<String>),
}

/// One row's cells and the problems found reading them.
struct Record {
    cells: HashMap<String, Cell>,
    errors: Vec<(String, String)>,
}

impl Record {
    fn bad(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push((field.to_string(), reason.into()));
    }

    fn raw(&self, field: &str) -> Option<&Cell> {
        match self.cells.get(field) {
            None | Some(Cell::Null) => None,
            Some(c) => Some(c),
        }
    }

    fn opt_text(&mut self, field: &str) -> Option<String> {
        match self.raw(field).cloned() {
            None => None,
            Some(Cell::Text(s)) => Some(s),
            Some(_) => {
                self.bad(field, "expected a single value, not a list");
                None
            }
        }
    }

    fn text(&mut self, field: &str) -> Option<String> {
        let t = self.opt_text(field);
        match t {
            None if !self.errors.iter().any(|(f, _)| f == field) => {
                self.bad(field, "required");
                None
            }
            Some(s) if s.trim().is_empty() => {
                self.bad(field, "must not be empty");
                None
            }
            Some(s) if s.chars().count() > MAX_TEXT => {
                self.bad(field, format!("longer than {MAX_TEXT} characters"));
                None
            }
            t => t,
        }
    }

    fn parsed<T: std::str::FromStr>(&mut self, field: &str, what: &str) -> Option<T> {
        let s = self.text(field)?;
        match s.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.bad(field, format!("{s:?} is not {what}"));
                None
            }
        }
    }

    fn opt_parsed<T: std::str::FromStr>(&mut self, field: &str, what: &str) -> Option<Option<T>> {
        match self.opt_text(field) {
            None => Some(None),
            Some(s) => match s.trim().parse::<T>() {
                Ok(v) => Some(Some(v)),
                Err(_) => {
                    self.bad(field, format!("{s:?} is not {what}"));
                    None
                }
            },
        }
    }

    fn uuid(&mut self, field: &str) -> Option<Uuid> {
        self.parsed(field, "a UUID")
    }

    fn one_of<T: std::str::FromStr>(&mut self, field: &str, all: &[String]) -> Option<T> {
        self.parsed(field, &format!("one of {}", all.join(", ")))
    }

    fn number(&mut self, field: &str, lo: f64, hi: f64) -> Option<f64> {
        let v: f64 = self.parsed(field, "a number")?;
        self.in_range(field, v, lo, hi)
    }

    fn opt_number(&mut self, field: &str, lo: f64, hi: f64) -> Option<Option<f64>> {
        match self.opt_parsed::<f64>(field, "a number")? {
            None => Some(None),
            Some(v) => self.in_range(field, v, lo, hi).map(Some),
        }
    }

    fn in_range(&mut self, field: &str, v: f64, lo: f64, hi: f64) -> Option<f64> {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Some(v)
        } else {
            self.bad(field, format!("{v} is outside {lo}..{hi}"));
            None
        }
    }

    fn boolean(&mut self, field: &str) -> Option<bool> {
        let s = self.text(field)?;
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" => Some(true),
            "false" | "f" | "0" | "no" => Some(false),
            _ => {
                self.bad(field, format!("{s:?} is not true or false"));
                None
            }
        }
    }

    fn time(&mut self, field: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let s = self.text(field)?;
        let t = parse_time(&s);
        if t.is_none() {
            self.bad(
                field,
                format!("{s:?} is not a time (RFC 3339, e.g. 2024-05-01T10:00:00Z)"),
            );
        }
        t
    }

    fn opt_time(&mut self, field: &str) -> Option<Option<chrono::DateTime<chrono::Utc>>> {
        if self.raw(field).is_none() {
            return Some(None);
        }
        self.time(field).map(Some)
    }

    fn list(&mut self, field: &str) -> Option<Vec<String>> {
        let items = match self.raw(field).cloned() {
            None | Some(Cell::Null) => vec![],
            Some(Cell::List(v)) => v,
            Some(Cell::Text(s)) => split_list(&s),
        };
        if items.len() > MAX_ITEMS {
            self.bad(field, format!("more than {MAX_ITEMS} items"));
            return None;
        }
        if let Some(bad) = items
            .iter()
            .find(|i| i.trim().is_empty() || i.chars().count() > MAX_TEXT)
        {
            self.bad(field, format!("item {bad:?} is empty or too long"));
            return None;
        }
        Some(items.into_iter().map(|i| i.trim().to_string()).collect())
    }

    fn unknown_fields(&mut self, known: &[&str]) {
        let mut unknown: Vec<String> = self
            .cells
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        for k in unknown {
            self.bad(&k, "unknown column");
        }
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    // Postgres's text form: `2024-05-01 10:00:00.123+00` (offset without minutes).
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, fmt) {
            return Some(t.to_utc());
        }
    }
    None
}

fn split_list(s: &str) -> Vec<String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .map(|x| (x, ','));
    let (body, sep) = inner.unwrap_or((s, ';'));
    body.split(sep)
        .map(|x| x.trim().trim_matches('"').to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

fn columns(table: &str) -> &'static [&'static str] {
    match table {
        "destinations" => &[
            "id",
            "name",
            "country",
            "tags",
            "cost_level",
            "trip_lengths",
            "latitude",
            "longitude",
        ],
        "profiles" => &[
            "id",
            "display_name",
            "age",
            "interests",
            "travel_style",
            "style_pace",
            "style_comfort",
            "style_spontaneity",
            "openness",
            "conscientiousness",
            "extraversion",
            "agreeableness",
            "neuroticism",
            "languages",
            "timezone",
            "budget",
            "preferred_duration",
            "created_at",
        ],
        "interactions" => &[
            "id",
            "user_id",
            "destination_id",
            "kind",
            "rating",
            "occurred_at",
        ],
        "match_outcomes" => &[
            "id",
            "user_a",
            "user_b",
            "destination_id",
            "trip_start",
            "trip_interests",
            "matched",
            "decided_at",
            "true_probability",
        ],
        "activity_events" => &["id", "user_id", "occurred_at"],
        "notification_log" => &[
            "id",
            "user_id",
            "notification_type",
            "channel",
            "sent_at",
            "opened_at",
        ],
        "channel_consent" => &["user_id", "channel", "granted", "updated_at"],
        _ => &[],
    }
}

fn names<T: std::fmt::Display>(all: &[T]) -> Vec<String> {
    all.iter().map(|x| x.to_string()).collect()
}

impl Import {
    /// Read one table's file (`table` is one of [`TABLES`]) into the import.
    pub fn read(&mut self, table: &str, file: &str, format: Format, text: &str) {
        let Some(table) = TABLES.iter().copied().find(|t| *t == table) else {
            self.errors.push(RowError {
                file: file.into(),
                line: 0,
                field: "-".into(),
                reason: format!("no table {table:?} (expected one of {})", TABLES.join(", ")),
            });
            return;
        };
        let entry = self
            .lines
            .entry(table)
            .or_insert_with(|| (file.to_string(), vec![]));
        entry.0 = file.to_string();
        let records = match format {
            Format::Csv => csv_records(file, text, &mut self.errors),
            Format::JsonLines => json_records(file, text, &mut self.errors),
        };
        for (line, cells) in records {
            let mut r = Record {
                cells,
                errors: vec![],
            };
            r.unknown_fields(columns(table));
            let ok = self.row(table, &mut r);
            if ok && r.errors.is_empty() {
                if let Some(e) = self.lines.get_mut(table) {
                    e.1.push(line);
                }
            } else {
                // A row that failed is not kept; drop what it may have pushed.
                if ok {
                    self.pop(table);
                }
                for (field, reason) in r.errors {
                    self.errors.push(RowError {
                        file: file.into(),
                        line,
                        field,
                        reason,
                    });
                }
            }
        }
    }

    fn pop(&mut self, table: &str) {
        let d = &mut self.data;
        match table {
            "destinations" => drop(d.destinations.pop()),
            "profiles" => drop(d.profiles.pop()),
            "interactions" => drop(d.interactions.pop()),
            "match_outcomes" => drop(d.matches.pop()),
            "activity_events" => drop(d.activity.pop()),
            "channel_consent" => drop(d.consents.pop()),
            _ => drop(d.notifications.pop()),
        }
    }

    /// Parse one row into the dataset; false when a required field was missing.
    fn row(&mut self, table: &str, r: &mut Record) -> bool {
        let d = &mut self.data;
        match table {
            "destinations" => {
                let (id, name, country, tags) = (
                    r.uuid("id"),
                    r.text("name"),
                    r.text("country"),
                    r.list("tags"),
                );
                let cost = r.one_of::<Budget>("cost_level", &names(Budget::ALL));
                let lengths = r.list("trip_lengths").and_then(|v| {
                    v.iter()
                        .map(|s| s.parse::<TripDuration>().ok())
                        .collect::<Option<Vec<_>>>()
                        .or_else(|| {
                            r.bad("trip_lengths", "items must be weekend, week or month");
                            None
                        })
                });
                let (lat, lon) = (
                    r.number("latitude", -90.0, 90.0),
                    r.number("longitude", -180.0, 180.0),
                );
                let (
                    Some(id),
                    Some(name),
                    Some(country),
                    Some(tags),
                    Some(cost_level),
                    Some(trip_lengths),
                    Some(latitude),
                    Some(longitude),
                ) = (id, name, country, tags, cost, lengths, lat, lon)
                else {
                    return false;
                };
                if tags.is_empty() {
                    r.bad("tags", "at least one tag");
                    return false;
                }
                d.destinations.push(Destination {
                    id,
                    name,
                    country,
                    tags,
                    cost_level,
                    trip_lengths,
                    latitude,
                    longitude,
                });
            }
            "profiles" => {
                let id = r.uuid("id");
                let name = r.text("display_name");
                let age = r.number("age", 13.0, 120.0);
                let interests = r.list("interests");
                let style = r.one_of::<TravelStyle>("travel_style", &names(TravelStyle::ALL));
                let unit = |r: &mut Record, f: &str| r.number(f, 0.0, 1.0).map(|v| v as f32);
                let sv = [
                    unit(r, "style_pace"),
                    unit(r, "style_comfort"),
                    unit(r, "style_spontaneity"),
                ];
                let pv = [
                    unit(r, "openness"),
                    unit(r, "conscientiousness"),
                    unit(r, "extraversion"),
                    unit(r, "agreeableness"),
                    unit(r, "neuroticism"),
                ];
                let languages = r.list("languages");
                let tz = r.text("timezone");
                if let Some(tz) = &tz {
                    if tz.parse::<chrono_tz::Tz>().is_err() {
                        r.bad("timezone", format!("{tz:?} is not an IANA time zone"));
                    }
                }
                let budget = r.one_of::<Budget>("budget", &names(Budget::ALL));
                let duration =
                    r.one_of::<TripDuration>("preferred_duration", &names(TripDuration::ALL));
                let created = r.opt_time("created_at");
                let (
                    Some(id),
                    Some(display_name),
                    Some(age),
                    Some(interests),
                    Some(travel_style),
                    Some(languages),
                    Some(timezone),
                    Some(budget),
                    Some(preferred_duration),
                    Some(created),
                ) = (
                    id, name, age, interests, style, languages, tz, budget, duration, created,
                )
                else {
                    return false;
                };
                let (Some(style_vector), Some(personality)) = (
                    sv.into_iter().collect::<Option<Vec<f32>>>(),
                    pv.into_iter().collect::<Option<Vec<f32>>>(),
                ) else {
                    return false;
                };
                d.profiles.push(Profile {
                    id,
                    display_name,
                    age: age as u8,
                    interests,
                    travel_style,
                    style_vector: [style_vector[0], style_vector[1], style_vector[2]],
                    personality: [
                        personality[0],
                        personality[1],
                        personality[2],
                        personality[3],
                        personality[4],
                    ],
                    languages,
                    timezone,
                    budget,
                    preferred_duration,
                    created_at: created.unwrap_or_else(chrono::Utc::now),
                });
            }
            "interactions" => {
                let (u, dest) = (r.uuid("user_id"), r.uuid("destination_id"));
                let kind = r.one_of::<InteractionKind>("kind", &names(InteractionKind::ALL));
                let rating = r.opt_number("rating", 1.0, 5.0);
                let at = r.time("occurred_at");
                let (
                    Some(user_id),
                    Some(destination_id),
                    Some(kind),
                    Some(rating),
                    Some(occurred_at),
                ) = (u, dest, kind, rating, at)
                else {
                    return false;
                };
                d.interactions.push(Interaction {
                    user_id,
                    destination_id,
                    kind,
                    rating: rating.map(|v| v as f32),
                    occurred_at,
                });
            }
            "match_outcomes" => {
                let (a, b) = (r.uuid("user_a"), r.uuid("user_b"));
                let dest = r.opt_parsed::<Uuid>("destination_id", "a UUID");
                let start = r.opt_parsed::<chrono::NaiveDate>("trip_start", "a date (YYYY-MM-DD)");
                let trip = r.list("trip_interests");
                let matched = r.boolean("matched");
                let at = r.time("decided_at");
                let p = r.opt_number("true_probability", 0.0, 1.0);
                let (
                    Some(user_a),
                    Some(user_b),
                    Some(destination_id),
                    Some(trip_start),
                    Some(trip_interests),
                    Some(matched),
                    Some(decided_at),
                    Some(p),
                ) = (a, b, dest, start, trip, matched, at, p)
                else {
                    return false;
                };
                if user_a == user_b {
                    r.bad("user_b", "a user cannot be matched with themselves");
                    return false;
                }
                d.matches.push(MatchOutcome {
                    user_a,
                    user_b,
                    destination_id,
                    trip_start,
                    trip_interests,
                    matched,
                    decided_at,
                    true_probability: p.map(|v| v as f32),
                });
            }
            "activity_events" => {
                let (u, at) = (r.uuid("user_id"), r.time("occurred_at"));
                let (Some(user_id), Some(occurred_at)) = (u, at) else {
                    return false;
                };
                d.activity.push(ActivityEvent {
                    user_id,
                    occurred_at,
                });
            }
            "channel_consent" => {
                let u = r.uuid("user_id");
                let c = r.one_of::<Channel>("channel", &names(Channel::ALL));
                let granted = r.boolean("granted");
                // When the user answered: accepted for the app's export to
                // round-trip, checked, and not kept (the store stamps its own).
                let at = r.opt_time("updated_at");
                let (Some(user_id), Some(channel), Some(granted), Some(_)) = (u, c, granted, at)
                else {
                    return false;
                };
                d.consents.push(ChannelConsent {
                    user_id,
                    channel,
                    granted,
                });
            }
            _ => {
                let u = r.uuid("user_id");
                let t = r
                    .one_of::<NotificationType>("notification_type", &names(NotificationType::ALL));
                let c = r.one_of::<Channel>("channel", &names(Channel::ALL));
                let (sent, opened) = (r.time("sent_at"), r.opt_time("opened_at"));
                let (
                    Some(user_id),
                    Some(notification_type),
                    Some(channel),
                    Some(sent_at),
                    Some(opened_at),
                ) = (u, t, c, sent, opened)
                else {
                    return false;
                };
                if opened_at.is_some_and(|o| o < sent_at) {
                    r.bad("opened_at", "before sent_at");
                    return false;
                }
                d.notifications.push(NotificationRecord {
                    user_id,
                    notification_type,
                    channel,
                    sent_at,
                    opened_at,
                });
            }
        }
        true
    }

    /// Check what rows refer to: ids must be new (not in the file twice, not
    /// already stored), and users and destinations must exist in the import
    /// or in the store (`stored_users`, `stored_destinations`).
    pub fn check_references(&mut self, stored_users: &[Uuid], stored_destinations: &[Uuid]) {
        let stored_u: HashSet<Uuid> = stored_users.iter().copied().collect();
        let stored_d: HashSet<Uuid> = stored_destinations.iter().copied().collect();
        let mut errors = vec![];
        let at = |lines: &HashMap<&'static str, (String, Vec<usize>)>, table: &str, i: usize| {
            lines
                .get(table)
                .map(|(f, l)| (f.clone(), l.get(i).copied().unwrap_or(0)))
                .unwrap_or_default()
        };
        let mut err = |(file, line): (String, usize), field: &str, reason: String| {
            errors.push(RowError {
                file,
                line,
                field: field.into(),
                reason,
            })
        };
        let d = &self.data;
        let mut users = stored_u.clone();
        for (i, p) in d.profiles.iter().enumerate() {
            if stored_u.contains(&p.id) {
                err(
                    at(&self.lines, "profiles", i),
                    "id",
                    format!("profile {} is already stored", p.id),
                );
            } else if !users.insert(p.id) {
                err(
                    at(&self.lines, "profiles", i),
                    "id",
                    format!("profile {} appears twice", p.id),
                );
            }
        }
        let mut dests = stored_d.clone();
        let mut names = HashSet::new();
        for (i, x) in d.destinations.iter().enumerate() {
            if stored_d.contains(&x.id) {
                err(
                    at(&self.lines, "destinations", i),
                    "id",
                    format!("destination {} is already stored", x.id),
                );
            } else if !dests.insert(x.id) {
                err(
                    at(&self.lines, "destinations", i),
                    "id",
                    format!("destination {} appears twice", x.id),
                );
            }
            if !names.insert(x.name.to_lowercase()) {
                err(
                    at(&self.lines, "destinations", i),
                    "name",
                    format!("{:?} appears twice", x.name),
                );
            }
        }
        let user = |u: &Uuid| users.contains(u);
        for (i, x) in d.interactions.iter().enumerate() {
            if !user(&x.user_id) {
                err(
                    at(&self.lines, "interactions", i),
                    "user_id",
                    format!("no profile {}", x.user_id),
                );
            }
            if !dests.contains(&x.destination_id) {
                err(
                    at(&self.lines, "interactions", i),
                    "destination_id",
                    format!("no destination {}", x.destination_id),
                );
            }
        }
        for (i, m) in d.matches.iter().enumerate() {
            for (field, u) in [("user_a", m.user_a), ("user_b", m.user_b)] {
                if !user(&u) {
                    err(
                        at(&self.lines, "match_outcomes", i),
                        field,
                        format!("no profile {u}"),
                    );
                }
            }
            if let Some(x) = m.destination_id.filter(|x| !dests.contains(x)) {
                err(
                    at(&self.lines, "match_outcomes", i),
                    "destination_id",
                    format!("no destination {x}"),
                );
            }
        }
        for (i, a) in d.activity.iter().enumerate() {
            if !user(&a.user_id) {
                err(
                    at(&self.lines, "activity_events", i),
                    "user_id",
                    format!("no profile {}", a.user_id),
                );
            }
        }
        for (i, n) in d.notifications.iter().enumerate() {
            if !user(&n.user_id) {
                err(
                    at(&self.lines, "notification_log", i),
                    "user_id",
                    format!("no profile {}", n.user_id),
                );
            }
        }
        // One answer per user and channel in a file (a stored one is
        // replaced: consent is a state).
        let mut answered = HashSet::new();
        for (i, c) in d.consents.iter().enumerate() {
            if !user(&c.user_id) {
                err(
                    at(&self.lines, "channel_consent", i),
                    "user_id",
                    format!("no profile {}", c.user_id),
                );
            } else if !answered.insert((c.user_id, c.channel)) {
                err(
                    at(&self.lines, "channel_consent", i),
                    "channel",
                    format!(
                        "{} appears twice for user {}",
                        c.channel.as_str(),
                        c.user_id
                    ),
                );
            }
        }
        self.errors.extend(errors);
    }
}

type Records = Vec<(usize, HashMap<String, Cell>)>;

fn csv_records(file: &str, text: &str, errors: &mut Vec<RowError>) -> Records {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = match rdr.headers() {
        Ok(h) => h.iter().map(|s| s.to_string()).collect(),
        Err(e) => {
            errors.push(RowError {
                file: file.into(),
                line: 1,
                field: "-".into(),
                reason: format!("unreadable header: {e}"),
            });
            return vec![];
        }
    };
    let mut out = vec![];
    for rec in rdr.records() {
        match rec {
            Ok(rec) => {
                let line = rec.position().map(|p| p.line() as usize).unwrap_or(0);
                let cells = headers
                    .iter()
                    .zip(rec.iter())
                    .map(|(h, v)| {
                        let cell = if v.is_empty() {
                            Cell::Null
                        } else {
                            Cell::Text(v.to_string())
                        };
                        (h.clone(), cell)
                    })
                    .collect();
                out.push((line, cells));
            }
            Err(e) => errors.push(RowError {
                file: file.into(),
                line: e.position().map(|p| p.line() as usize).unwrap_or(0),
                field: "-".into(),
                reason: format!("not a CSV row: {e}"),
            }),
        }
    }
    out
}

fn json_records(file: &str, text: &str, errors: &mut Vec<RowError>) -> Records {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut bad = |field: &str, reason: String| {
            errors.push(RowError {
                file: file.into(),
                line: i + 1,
                field: field.into(),
                reason,
            })
        };
        let obj = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => {
                bad("-", "expected a JSON object".into());
                continue;
            }
            Err(e) => {
                bad("-", format!("not JSON: {e}"));
                continue;
            }
        };
        let mut cells = HashMap::new();
        let mut ok = true;
        for (k, v) in obj {
            use serde_json::Value as V;
            let cell = match v {
                V::Null => Cell::Null,
                V::String(s) => Cell::Text(s),
                V::Number(n) => Cell::Text(n.to_string()),
                V::Bool(b) => Cell::Text(b.to_string()),
                V::Array(items) => {
                    let strings: Option<Vec<String>> = items
                        .into_iter()
                        .map(|x| match x {
                            V::String(s) => Some(s),
                            _ => None,
                        })
                        .collect();
                    match strings {
                        Some(s) => Cell::List(s),
                        None => {
                            bad(&k, "expected an array of strings".into());
                            ok = false;
                            continue;
                        }
                    }
                }
                V::Object(_) => {
                    bad(&k, "expected a value, not an object".into());
                    ok = false;
                    continue;
                }
            };
            cells.insert(k, cell);
        }
        if ok {
            out.push((i + 1, cells));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "00000000-0000-4000-8000-000000000001";
    const P2: &str = "00000000-0000-4000-8000-000000000002";
    const D1: &str = "00000000-0000-4000-8000-0000000000d1";

    fn profiles_csv() -> String {
        format!(
            "id,display_name,age,interests,travel_style,style_pace,style_comfort,style_spontaneity,openness,conscientiousness,extraversion,agreeableness,neuroticism,languages,timezone,budget,preferred_duration,created_at\n\
             {P1},Ana,31,hiking;food,adventurer,0.7,0.3,0.5,0.6,0.5,0.4,0.7,0.3,\"{{en,es}}\",Europe/Madrid,medium,week,2024-01-02 10:00:00+00\n\
             {P2},Ben,45,\"{{art,museums}}\",cultural,0.2,0.8,0.1,0.5,0.9,0.3,0.6,0.2,en,America/New_York,high,weekend,2024-02-03T08:30:00Z\n"
        )
    }

    #[test]
    fn good_files_in_either_format_read_into_the_domain_types() {
        let mut imp = Import::default();
        imp.read("profiles", "profiles.csv", Format::Csv, &profiles_csv());
        imp.read(
            "destinations",
            "destinations.jsonl",
            Format::JsonLines,
            &format!(
                r#"{{"id":"{D1}","name":"Lisbon","country":"Portugal","tags":["food","beach"],"cost_level":"medium","trip_lengths":["weekend","week"],"latitude":38.72,"longitude":-9.14}}"#
            ),
        );
        imp.read(
            "interactions",
            "interactions.jsonl",
            Format::JsonLines,
            &format!(
                "{{\"user_id\":\"{P1}\",\"destination_id\":\"{D1}\",\"kind\":\"rated\",\"rating\":4.5,\"occurred_at\":\"2024-03-01T12:00:00+02:00\"}}\n\n"
            ),
        );
        imp.check_references(&[], &[]);
        assert!(imp.errors.is_empty(), "{:?}", imp.errors);
        let d = &imp.data;
        assert_eq!(d.profiles.len(), 2);
        assert_eq!(d.profiles[0].interests, vec!["hiking", "food"]);
        assert_eq!(d.profiles[0].languages, vec!["en", "es"]);
        assert_eq!(d.profiles[1].interests, vec!["art", "museums"]);
        assert_eq!(d.profiles[1].travel_style, TravelStyle::Cultural);
        assert_eq!(
            d.profiles[0].created_at.to_rfc3339(),
            "2024-01-02T10:00:00+00:00"
        );
        assert_eq!(
            d.destinations[0].trip_lengths,
            vec![TripDuration::Weekend, TripDuration::Week]
        );
        assert_eq!(d.interactions[0].rating, Some(4.5));
        assert_eq!(
            d.interactions[0].occurred_at.to_rfc3339(),
            "2024-03-01T10:00:00+00:00"
        );
    }

    #[test]
    fn channel_consent_reads_one_answer_per_user_and_channel() {
        let mut imp = Import::default();
        imp.read("profiles", "profiles.csv", Format::Csv, &profiles_csv());
        imp.read(
            "channel_consent",
            "channel_consent.csv",
            Format::Csv,
            &format!(
                "user_id,channel,granted,updated_at\n\
                 {P1},email,true,2024-05-01T10:00:00Z\n\
                 {P1},sms,no,\n\
                 {P1},email,false,\n\
                 {P2},pigeon,true,\n\
                 {P2},push,maybe,\n\
                 {},push,true,\n",
                Uuid::from_u128(9)
            ),
        );
        imp.check_references(&[], &[]);
        let got: Vec<String> = imp.errors.iter().map(|e| e.to_string()).collect();
        let has = |s: &str| got.iter().any(|e| e.starts_with(s));
        for want in [
            "channel_consent.csv:4: channel: email appears twice for user",
            "channel_consent.csv:5: channel: \"pigeon\" is not one of push, email, sms",
            "channel_consent.csv:6: granted: \"maybe\" is not true or false",
            "channel_consent.csv:7: user_id: no profile",
        ] {
            assert!(has(want), "missing {want:?} in {got:#?}");
        }
        assert_eq!(got.len(), 4, "{got:#?}");
        let p1 = Uuid::parse_str(P1).unwrap();
        assert_eq!(
            imp.data.consents[..2],
            [
                ChannelConsent {
                    user_id: p1,
                    channel: Channel::Email,
                    granted: true
                },
                ChannelConsent {
                    user_id: p1,
                    channel: Channel::Sms,
                    granted: false
                },
            ]
        );
    }

    #[test]
    fn every_bad_row_is_reported_by_line_and_field_and_kept_out() {
        let mut csv = profiles_csv();
        csv.push_str(&format!(
            "{},Cy,9,,pirate,1.5,0.3,0.5,0.6,0.5,0.4,0.7,0.3,en,Mars/Olympus,medium,week,\n",
            Uuid::new_v4()
        ));
        csv.push_str(
            "not-a-uuid,Di,30,,cultural,0.1,0.3,0.5,0.6,0.5,0.4,0.7,0.3,en,UTC,huge,week,\n",
        );
        let mut imp = Import::default();
        imp.read("profiles", "profiles.csv", Format::Csv, &csv);
        imp.read(
            "activity_events",
            "activity_events.jsonl",
            Format::JsonLines,
            &format!(
                "{{\"user_id\":\"{P1}\",\"occurred_at\":\"yesterday\"}}\n{{\"user_id\":\"{}\",\"occurred_at\":\"2024-01-01T00:00:00Z\"}}\n[1]\n{{\"user_id\":\"{P2}\",\"occurred_at\":\"2024-01-01T00:00:00Z\",\"mood\":\"happy\"}}\n",
                Uuid::new_v4()
            ),
        );
        imp.check_references(&[], &[]);
        let got: Vec<String> = imp.errors.iter().map(|e| e.to_string()).collect();
        let has = |s: &str| got.iter().any(|e| e.starts_with(s));
        for want in [
            "profiles.csv:4: age: 9 is outside 13..120",
            "profiles.csv:4: travel_style: \"pirate\" is not one of",
            "profiles.csv:4: style_pace: 1.5 is outside 0..1",
            "profiles.csv:4: timezone: \"Mars/Olympus\" is not an IANA time zone",
            "profiles.csv:5: id: \"not-a-uuid\" is not a UUID",
            "profiles.csv:5: budget: \"huge\" is not one of low, medium, high",
            "activity_events.jsonl:1: occurred_at: \"yesterday\" is not a time",
            "activity_events.jsonl:2: user_id: no profile",
            "activity_events.jsonl:3: -: expected a JSON object",
            "activity_events.jsonl:4: mood: unknown column",
        ] {
            assert!(has(want), "missing {want:?} in {got:#?}");
        }
        // Only the good rows are in the dataset (and the caller writes none of
        // them while any error remains).
        assert_eq!(imp.data.profiles.len(), 2);
        assert_eq!(imp.data.activity.len(), 1);
    }

    #[test]
    fn ids_already_stored_or_repeated_are_refused() {
        let mut imp = Import::default();
        let mut csv = profiles_csv();
        let second = csv.lines().nth(2).unwrap().to_string();
        csv.push_str(&second);
        csv.push('\n');
        imp.read("profiles", "p.csv", Format::Csv, &csv);
        imp.check_references(&[P1.parse().unwrap()], &[]);
        let got: Vec<String> = imp.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            got.iter()
                .any(|e| e.starts_with("p.csv:2: id: profile") && e.ends_with("already stored")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("p.csv:4: id: profile") && e.ends_with("appears twice")),
            "{got:?}"
        );
    }

    #[test]
    fn lists_and_times_parse_in_the_forms_exports_write() {
        assert_eq!(split_list("{a,\"b c\",d}"), vec!["a", "b c", "d"]);
        assert_eq!(split_list("a; b ;c"), vec!["a", "b", "c"]);
        assert_eq!(split_list("{}"), Vec::<String>::new());
        for s in [
            "2024-05-01T10:00:00Z",
            "2024-05-01T12:00:00+02:00",
            "2024-05-01 10:00:00+00",
            "2024-05-01 10:00:00.000+00",
        ] {
            assert_eq!(
                parse_time(s).map(|t| t.to_rfc3339()),
                Some("2024-05-01T10:00:00+00:00".to_string()),
                "{s}"
            );
        }
        assert!(parse_time("2024-05-01").is_none());
        assert_eq!(Format::of("x/profiles.CSV"), Some(Format::Csv));
        assert_eq!(Format::of("profiles.ndjson"), Some(Format::JsonLines));
        assert_eq!(Format::of("profiles.txt"), None);
    }
}
