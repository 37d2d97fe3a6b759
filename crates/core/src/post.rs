//! Post-processing: what turns model outputs into the API's answers — match
//! confidence, recommendation filters and reasons, and the notification policy
//! (send time, channel, confidence, reason).

use crate::catalogue::Catalogue;
use crate::features::{
    local_hour_of_week, parse_tz, MatchContext, PopulationActivity, UserFeatures, HOURS_PER_WEEK,
};
use crate::types::*;
use chrono::{DateTime, Datelike, Duration, DurationRound, Timelike, Utc};

/// How complete the inputs of a match prediction are, in 0.5..1: both users'
/// declared interests and both users' behaviour history.
pub fn match_completeness(a: &UserFeatures, b: &UserFeatures) -> f32 {
    let signals = [
        !a.interest_tags().is_empty(),
        !b.interest_tags().is_empty(),
        a.has_history(),
        b.has_history(),
    ];
    0.5 + 0.5 * signals.iter().filter(|s| **s).count() as f32 / signals.len() as f32
}

/// Confidence of a match score: the expected accuracy of the yes/no call a
/// calibrated probability implies (`max(p, 1 − p)`), discounted by how complete
/// the inputs are.
pub fn match_confidence(score: f32, completeness: f32) -> f32 {
    (score.max(1.0 - score) * completeness).clamp(0.0, 1.0)
}

/// The catalogue index of a context destination name, if known.
pub fn match_context(
    cat: &Catalogue,
    destination: Option<&str>,
    interests: &[String],
) -> MatchContext {
    MatchContext {
        destination_tags: destination
            .and_then(|d| cat.find_by_name(d))
            .map(|i| cat.tags[i]),
        interests: TagSet::from_names(interests),
        ..Default::default()
    }
}

/// Whether a destination passes the request's filters: a budget admits places
/// at or below it; a duration admits places with that typical trip length.
pub fn passes_filters(
    d: &Destination,
    budget: Option<Budget>,
    duration: Option<TripDuration>,
) -> bool {
    budget.is_none_or(|b| d.cost_level <= b) && duration.is_none_or(|t| d.trip_lengths.contains(&t))
}

/// Append `items` to `out` as a list in prose: "a", "a and b", "a, b and c";
/// each item through `push` (which writes it).
fn push_joined<T>(
    out: &mut String,
    items: impl Iterator<Item = T>,
    mut push: impl FnMut(&mut String, T),
) {
    let mut items = items.peekable();
    let mut first = true;
    while let Some(item) = items.next() {
        if !first {
            out.push_str(if items.peek().is_some() {
                ", "
            } else {
                " and "
            });
        }
        push(out, item);
        first = false;
    }
}

/// A tag as prose: `street_food` → "street food".
fn push_human_tag(out: &mut String, t: &str) {
    out.extend(t.chars().map(|c| if c == '_' { ' ' } else { c }));
}

/// Which destinations (catalogue indices) a list names: `mask[d]`, false past
/// its end.
pub fn destination_mask(destinations: &[u32]) -> Vec<bool> {
    let len = destinations.iter().max().map_or(0, |m| *m as usize + 1);
    let mut mask = vec![false; len];
    for d in destinations {
        mask[*d as usize] = true;
    }
    mask
}

/// What drove a recommendation's score most (from the model's own attribution).
#[derive(Debug, Clone, PartialEq)]
pub enum RecDriver<'a> {
    /// Destinations in the user's history, strongest first, and whether the
    /// user went there (booked or visited) rather than only explored it.
    History(&'a [(&'a str, bool)]),
    /// The user's profile: declared interests the destination offers (may be
    /// none; the reason names the first two), their budget and preferred
    /// trip length.
    Profile {
        interests: TagSet,
        budget: Budget,
        duration: TripDuration,
    },
    /// Popularity: what travellers engage with overall.
    Popularity,
}

/// The two strongest of `shares` (share, item) that are above zero, strongest
/// first; of equal shares the earlier comes first (what a stable sort by
/// descending share, then taking two, gives). Returns them and how many.
pub fn strongest_two(shares: impl Iterator<Item = (f32, usize)>) -> ([(f32, usize); 2], usize) {
    let mut top = [(0f32, 0usize); 2];
    let mut n = 0;
    for (s, item) in shares {
        // Only shares above zero, as the filter `s > 0.0` kept (so no NaN).
        if s.is_nan() || s <= 0.0 {
            continue;
        }
        if n == 0 || s > top[0].0 {
            top[1] = top[0];
            top[0] = (s, item);
            n = (n + 1).min(2);
        } else if n == 1 || s > top[1].0 {
            top[1] = (s, item);
            n = 2;
        }
    }
    (top, n)
}

/// A match answer without the model: what `/match/score` says, marked as a
/// fallback, when the model fails or times out and no cached answer exists.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchFallback {
    pub score: f32,
    pub interest_overlap: f32,
    pub travel_style: f32,
    pub personality: f32,
}

/// The documented fallback match: the Jaccard overlap of the two users'
/// interests, their travel-style agreement (1 − the RMS distance of their
/// style vectors) and personality similarity (1 − the mean absolute
/// difference of the five traits), each in [0, 1]; the score is their mean.
/// `x` is `features::match_features`' row.
pub fn match_fallback(x: &[f32]) -> MatchFallback {
    let interest_overlap = x[0].clamp(0.0, 1.0);
    let travel_style = (1.0 - x[15]).clamp(0.0, 1.0);
    let personality = (1.0 - x[21..26].iter().sum::<f32>() / 5.0).clamp(0.0, 1.0);
    MatchFallback {
        score: (interest_overlap + travel_style + personality) / 3.0,
        interest_overlap,
        travel_style,
        personality,
    }
}

/// The reason shown with a recommendation.
pub fn recommendation_reason(driver: &RecDriver) -> String {
    // Written into one buffer: ten of these per recommendation answer made
    // their intermediate strings a visible share of the endpoint's CPU.
    match driver {
        RecDriver::History(items) if !items.is_empty() => {
            let went = items.iter().all(|(_, v)| *v);
            let mut out = String::with_capacity(64);
            out.push_str(if went {
                "Because you visited "
            } else {
                "Because you explored "
            });
            push_joined(&mut out, items.iter(), |o, (n, _)| o.push_str(n));
            out
        }
        RecDriver::Profile { interests, .. } if !interests.is_empty() => {
            let mut out = String::with_capacity(64);
            out.push_str("Matches your interest in ");
            push_joined(&mut out, interests.iter_names().take(2), push_human_tag);
            out
        }
        RecDriver::Profile {
            budget, duration, ..
        } => {
            format!("Fits your {budget} budget and {duration} trips")
        }
        _ => "Popular with travellers like you".into(),
    }
}

/// Local hours during which only urgent notifications are sent: `[start, end)`,
/// wrapping past midnight when `start > end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: u32,
    pub end: u32,
}

impl Default for QuietHours {
    fn default() -> Self {
        Self { start: 22, end: 8 }
    }
}

impl QuietHours {
    pub fn contains(&self, hour: u32) -> bool {
        if self.start == self.end {
            false
        } else if self.start < self.end {
            hour >= self.start && hour < self.end
        } else {
            hour >= self.start || hour < self.end
        }
    }
}

/// What an operator allows every notification: quiet hours, the channels a
/// user is taken to have agreed to when the app's data has no answer, and
/// a frequency cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationPolicy {
    pub quiet: QuietHours,
    /// Per channel (push, email, sms): assumed agreed to when the app's
    /// `channel_consent` has no row for the user and channel.
    pub default_channels: [bool; 3],
    /// At most this many notifications within any 24 hours around a
    /// non-urgent one (counted from the app's notification log; urgent ones
    /// are never held back); 0: no cap.
    pub cap: u32,
}

impl Default for NotificationPolicy {
    fn default() -> Self {
        Self {
            quiet: QuietHours::default(),
            default_channels: [true, false, false],
            cap: 3,
        }
    }
}

impl NotificationPolicy {
    /// The default policy with other quiet hours.
    pub fn with_quiet(quiet: QuietHours) -> Self {
        Self {
            quiet,
            ..Self::default()
        }
    }

    /// The channels this user may be sent to: what they agreed to, and the
    /// default where the app has no answer.
    pub fn channels(&self, u: &UserFeatures) -> [bool; 3] {
        std::array::from_fn(|c| u.consent[c].unwrap_or(self.default_channels[c]))
    }

    /// Whether a notification at `at` would be held back by the cap: `cap`
    /// or more of the user's notifications less than 24 hours before or after
    /// it (a rolling day either side, so neither the day that ends at `at`
    /// nor the one that starts there goes over).
    fn capped(&self, u: &UserFeatures, urgency: Urgency, at: DateTime<Utc>) -> bool {
        if self.cap == 0 || urgency == Urgency::High {
            return false;
        }
        let day = Duration::hours(24);
        let near = u
            .recent_sends
            .iter()
            .filter(|t| (**t - at).abs() < day)
            .count();
        near >= self.cap as usize
    }
}

/// The answer of the notification policy.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationPlan {
    pub send_at: DateTime<Utc>,
    pub channel: Channel,
    pub confidence: f32,
    pub reason: String,
}

/// How far ahead a notification may be scheduled.
pub fn send_window(urgency: Urgency, kind: NotificationType) -> Duration {
    let base: f64 = match urgency {
        Urgency::High => 2.0,
        Urgency::Medium => 24.0,
        Urgency::Low => 168.0,
    };
    // Messages are more urgent than match news, and match news more than reminders.
    let factor = match kind {
        NotificationType::Message => 0.5,
        NotificationType::MatchFound => 1.0,
        NotificationType::Reminder => 1.5,
    };
    Duration::minutes(((base * factor).clamp(1.0, 168.0) * 60.0) as i64)
}

/// Format a local hour as a one-hour span, e.g. 14 → "2-3pm", 11 → "11am-12pm".
pub fn hour_span(h: usize) -> String {
    let f = |h: usize| {
        let h = h % 24;
        let n = if h.is_multiple_of(12) { 12 } else { h % 12 };
        (n, if h < 12 { "am" } else { "pm" })
    };
    let (a, am) = f(h);
    let (b, bm) = f(h + 1);
    if am == bm {
        format!("{a}-{b}{bm}")
    } else {
        format!("{a}{am}-{b}{bm}")
    }
}

/// Minimum sessions before a user's own pattern is described as theirs.
const OWN_PATTERN_SESSIONS: u32 = 10;

/// The user's busiest local hour: (hour, on weekends), from their own
/// sessions as average sessions per day at each hour, weekdays and weekends
/// apart (a weekend has two days, a week five).
fn busiest_hour(u: &UserFeatures) -> (usize, bool) {
    let per_day = |days: std::ops::Range<usize>, h: usize| {
        let n = days.len() as f32;
        days.map(|d| u.activity[d * 24 + h]).sum::<f32>() / n
    };
    let best = |days: std::ops::Range<usize>| {
        (0..24)
            .map(|h| (h, per_day(days.clone(), h)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0))
    };
    let (wd_h, wd) = best(0..5);
    let (we_h, we) = best(5..7);
    if wd >= we {
        (wd_h, false)
    } else {
        (we_h, true)
    }
}

fn day_kind(weekend: bool) -> &'static str {
    if weekend {
        "weekends"
    } else {
        "weekdays"
    }
}

fn population_best_hour(pop: &PopulationActivity) -> usize {
    (0..24)
        .max_by(|&a, &b| pop.hour_of_day(a).total_cmp(&pop.hour_of_day(b)))
        .unwrap_or(19)
}

/// Why a plan sends at `send_at`: the chosen local hour and day, and, when
/// the user's own busiest hour (or, with little history, the population's)
/// is not the one chosen, what ruled it out — quiet hours, the frequency
/// cap, or no such hour in the send window. E.g. "Active around 9-10pm on
/// weekdays; 11pm-12am would be in quiet hours". `held_back`: the time the
/// plan preferred when the cap held it back (the send time is then the
/// first the cap allows, and the reason says so).
pub fn plan_reason(
    r: &NotificationRequest,
    slots: &PlanSlots,
    send_at: DateTime<Utc>,
    held_back: Option<DateTime<Utc>>,
) -> String {
    let local = send_at.with_timezone(&slots.tz);
    let chosen = local.hour() as usize;
    let weekend = local.weekday().num_days_from_monday() >= 5;
    let window_h = send_window(r.urgency, r.kind).num_hours().max(1);
    let quiet_applies = r.urgency != Urgency::High;
    let urgent = if r.urgency == Urgency::High {
        "Urgent, so within the next hours; "
    } else {
        ""
    };
    let (peak, peak_weekend, head) = if r.user.n_activity < OWN_PATTERN_SESSIONS {
        let p = population_best_hour(r.population);
        (
            p,
            weekend,
            format!(
                "{urgent}little activity on record yet, so timed for {} local time, when many users are active",
                hour_span(chosen)
            ),
        )
    } else {
        let (p, pw) = busiest_hour(r.user);
        (
            p,
            pw,
            format!(
                "{urgent}active around {} on {}",
                hour_span(chosen),
                day_kind(weekend)
            ),
        )
    };
    let mut reason = head;
    if let Some(c) = reason.get_mut(0..1) {
        c.make_ascii_uppercase();
    }
    let over_cap = format!(
        "would go over the cap of {} notifications in 24 hours",
        r.policy.cap
    );
    if let Some(at) = held_back {
        let held = at.with_timezone(&slots.tz);
        return format!(
            "{reason}; {} on {} {over_cap}, so this is the first hour the cap allows",
            hour_span(held.hour() as usize),
            day_kind(held.weekday().num_days_from_monday() >= 5),
        );
    }
    if (peak, peak_weekend) == (chosen, weekend) {
        return reason;
    }
    let why = if quiet_applies && r.policy.quiet.contains(peak as u32) {
        format!("{} would be in quiet hours", hour_span(peak))
    } else {
        let on = if peak_weekend != weekend {
            format!(" on {}", day_kind(peak_weekend))
        } else {
            String::new()
        };
        match slot_in_window(r, slots, peak, peak_weekend) {
            Some(false) => format!("rated above {}{on} by the timing model", hour_span(peak)),
            Some(true) => format!("{}{on} {over_cap}", hour_span(peak)),
            None => format!(
                "{}{on} is not within the next {window_h} hours",
                hour_span(peak)
            ),
        }
    };
    format!("{reason}; {why}")
}

/// Whether the plan's slots inside the send window (the hours quiet hours
/// allow) include local hour `hour` on that kind of day: `Some(capped)`
/// when they do, with whether the frequency cap holds every such slot back.
fn slot_in_window(
    r: &NotificationRequest,
    slots: &PlanSlots,
    hour: usize,
    weekend: bool,
) -> Option<bool> {
    let end = r.now + send_window(r.urgency, r.kind);
    let mut matching = slots.slots.iter().filter(|s| {
        s.at <= end && s.hour_of_week % 24 == hour && (s.hour_of_week / 24 >= 5) == weekend
    });
    let first = matching.next()?;
    Some(first.capped && matching.all(|s| s.capped))
}

/// The user's open rate per channel, shrunk towards the population's.
pub fn channel_open_rates(u: &UserFeatures, prior: [f32; 3]) -> [f32; 3] {
    const PRIOR_WEIGHT: f32 = 10.0;
    std::array::from_fn(|c| {
        (u.channel_opened[c] as f32 + PRIOR_WEIGHT * prior[c])
            / (u.channel_sent[c] as f32 + PRIOR_WEIGHT)
    })
}

/// Pick, among the `allowed` channels, the one most likely to be seen in
/// time: SMS only when urgent (or the only one allowed), email discounted
/// when the message should be seen soon. `None` when no channel is allowed.
pub fn choose_channel(rates: [f32; 3], urgency: Urgency, allowed: [bool; 3]) -> Option<Channel> {
    let speed = |c: Channel| match (c, urgency) {
        (Channel::Sms, Urgency::High) => 1.0,
        (Channel::Sms, _) => 0.0,
        (Channel::Email, Urgency::High) => 0.4,
        (Channel::Email, Urgency::Medium) => 0.8,
        _ => 1.0,
    };
    Channel::ALL
        .iter()
        .filter(|c| allowed[c.index()])
        .max_by(|a, b| (rates[a.index()] * speed(**a)).total_cmp(&(rates[b.index()] * speed(**b))))
        .copied()
}

/// Everything the notification policy needs.
#[derive(Debug, Clone)]
pub struct NotificationRequest<'a> {
    pub user: &'a UserFeatures,
    /// The timing model's probability of activity per local hour of week.
    pub scores: &'a [f32],
    pub population: &'a PopulationActivity,
    pub channel_prior: [f32; 3],
    pub kind: NotificationType,
    pub urgency: Urgency,
    pub now: DateTime<Utc>,
    pub policy: NotificationPolicy,
}

/// How long a notification plan made at `now` stays the answer: until the
/// next quarter hour (when the local hour may change in any time zone, the
/// quarter-hour offsets included) or until its send time, whichever is first.
pub fn plan_valid_for(now: DateTime<Utc>, send_at: DateTime<Utc>) -> std::time::Duration {
    let secs = now.timestamp();
    let next_quarter = (secs.div_euclid(900) + 1) * 900;
    let until = (next_quarter - secs).min(send_at.timestamp() - secs);
    std::time::Duration::from_secs(until.max(0) as u64)
}

/// One hour a notification plan weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Hours from the current one (0: a minute from now).
    k: i64,
    at: DateTime<Utc>,
    /// The user's local hour of the week there (the timing model's row).
    hour_of_week: usize,
    /// Held back by the frequency cap.
    capped: bool,
}

/// The hours a plan weighs, in order: from a minute from now, each hour that
/// quiet hours allow (all of them when urgent) up to the end of the send
/// window, each marked if the frequency cap holds it back; then, after the
/// window, up to the first hour that quiet hours and the cap both allow.
/// Which they are depends on the clock, the time zone, the user's recent
/// notifications and the policy, never on the scores, so the timing model
/// need only run on these hours. Made once per notification by
/// [`plan_slots`]: the rows to run are its [`PlanSlots::hours`], and
/// [`plan_notification_in`] weighs the same slots.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSlots {
    slots: Vec<Slot>,
    /// The user's time zone, parsed once.
    tz: chrono_tz::Tz,
}

impl PlanSlots {
    /// The local hours of the week (distinct, ascending) whose scores the
    /// plan reads: the rows the timing model has to run.
    pub fn hours(&self) -> Vec<usize> {
        let mut hours: Vec<usize> = self.slots.iter().map(|s| s.hour_of_week).collect();
        hours.sort_unstable();
        hours.dedup();
        hours
    }
}

/// The slots of a plan for this user (their time zone and recent
/// notifications), notification, clock and policy.
pub fn plan_slots(
    user: &UserFeatures,
    kind: NotificationType,
    urgency: Urgency,
    now: DateTime<Utc>,
    policy: &NotificationPolicy,
) -> PlanSlots {
    let tz = parse_tz(&user.timezone);
    let earliest = now + Duration::minutes(1);
    let window_end = now + send_window(urgency, kind);
    let hour0 = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let respect_quiet = urgency != Urgency::High;
    // At most one slot per hour of the window, the first and those after.
    let window_hours = (window_end - now)
        .num_hours()
        .clamp(0, HOURS_PER_WEEK as i64) as usize;
    let mut out = Vec::with_capacity(window_hours + 2);
    // A cap reaches at most a day past the last notification it counts; two
    // weeks bound the walk whatever the log holds.
    for k in 0..=2 * HOURS_PER_WEEK as i64 {
        let at = if k == 0 {
            earliest
        } else {
            hour0 + Duration::hours(k)
        };
        // Past the window, only as far as a slot to send at: the last one
        // made is one the cap allows (so a held-back send can move to it).
        if at > window_end && out.last().is_some_and(|s: &Slot| !s.capped) {
            break;
        }
        // One conversion to local time per hour, for both the quiet-hours
        // check and the hour of the week (each is a search of the zone's
        // transitions).
        let local = at.with_timezone(&tz);
        if respect_quiet && policy.quiet.contains(local.hour()) {
            continue;
        }
        out.push(Slot {
            k,
            at,
            hour_of_week: local_hour_of_week(&local),
            capped: policy.capped(user, urgency, at),
        });
    }
    PlanSlots { slots: out, tz }
}

/// Choose when and how to send: the best-scored hour within the urgency's
/// window, outside quiet hours unless urgent, always in the future, on a
/// channel the user agreed to; when the frequency cap holds that hour back,
/// the first hour after it that the cap allows. Only the scores of
/// [`PlanSlots::hours`] are read. `None` when the user may be sent nothing
/// (no channel agreed to).
pub fn plan_notification(r: &NotificationRequest) -> Option<NotificationPlan> {
    let channel = notification_channel(r.user, r.urgency, r.channel_prior, &r.policy)?;
    Some(plan_notification_in(
        r,
        &plan_slots(r.user, r.kind, r.urgency, r.now, &r.policy),
        channel,
    ))
}

/// The channel a notification goes out on: of those the user agreed to
/// (or the policy's default where the app has no answer), the one most
/// likely to be seen in time; `None` when there is none.
pub fn notification_channel(
    u: &UserFeatures,
    urgency: Urgency,
    channel_prior: [f32; 3],
    policy: &NotificationPolicy,
) -> Option<Channel> {
    choose_channel(
        channel_open_rates(u, channel_prior),
        urgency,
        policy.channels(u),
    )
}

/// [`plan_notification`] over slots already made by [`plan_slots`] for the
/// same user, notification, clock and policy (the caller ran the model on
/// their hours), on a `channel` [`notification_channel`] chose.
pub fn plan_notification_in(
    r: &NotificationRequest,
    slots: &PlanSlots,
    channel: Channel,
) -> NotificationPlan {
    assert_eq!(r.scores.len(), HOURS_PER_WEEK, "one score per hour of week");
    let window_end = r.now + send_window(r.urgency, r.kind);
    let mut best: Option<(&Slot, f32)> = None;
    for slot in slots.slots.iter().take_while(|s| s.at <= window_end) {
        // Urgent messages also prefer sooner slots.
        let decay = if r.urgency == Urgency::High {
            1.0 - 0.1 * slot.k as f32
        } else {
            1.0
        };
        let s = r.scores[slot.hour_of_week] * decay;
        if best.is_none_or(|(_, bs)| s > bs) {
            best = Some((slot, s));
        }
    }
    // The preferred slot, or, when the cap holds it back (or the window has
    // none), the first one after it that the cap allows.
    let preferred = best.map(|b| b.0);
    let chosen = match preferred {
        Some(p) if !p.capped => Some(p),
        _ => {
            let after = preferred.map(|p| p.at);
            slots
                .slots
                .iter()
                .find(|s| !s.capped && after.is_none_or(|a| s.at > a))
        }
    };
    let send_at = chosen
        .or(slots.slots.last())
        .map(|s| s.at)
        .unwrap_or(r.now + Duration::minutes(1));
    let held_back = preferred.filter(|p| p.capped).map(|p| p.at);
    let reason = plan_reason(r, slots, send_at, held_back);
    NotificationPlan {
        send_at,
        channel,
        confidence: notification_confidence(
            r.user,
            send_at.with_timezone(&slots.tz).hour() as usize,
        ),
        reason,
    }
}

/// How sure the plan is: grows with the user's history and with how much of it
/// falls near the chosen local hour.
pub fn notification_confidence(u: &UserFeatures, local_hour: usize) -> f32 {
    let n = u.n_activity as f32;
    let history = n / (n + 30.0);
    let near: f32 = (0..7)
        .flat_map(|d| [23, 0, 1].map(|o| u.activity[d * 24 + (local_hour + o) % 24]))
        .sum();
    let share = if n > 0.0 { near / n } else { 0.0 };
    let peaked = ((share - 0.125) / (0.6 - 0.125)).clamp(0.0, 1.0);
    (0.2 + 0.75 * history * (0.4 + 0.6 * peaked)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_plan_is_cached_until_the_next_quarter_hour_or_its_send_time() {
        use chrono::TimeZone;
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 10, 7, 30).unwrap();
        let later = now + Duration::hours(5);
        assert_eq!(super::plan_valid_for(now, later).as_secs(), 7 * 60 + 30);
        let soon = now + Duration::seconds(40);
        assert_eq!(super::plan_valid_for(now, soon).as_secs(), 40);
        assert_eq!(super::plan_valid_for(now, now).as_secs(), 0);
        let on_the_quarter = Utc.with_ymd_and_hms(2026, 3, 1, 10, 15, 0).unwrap();
        assert_eq!(super::plan_valid_for(on_the_quarter, later).as_secs(), 900);
    }

    use super::*;
    use crate::catalogue::builtin;
    use chrono::TimeZone;

    /// The crate's test user, with `n` sessions at a local hour on five days.
    fn user(tz: &str, sessions_at_local_hour: Option<(usize, u32)>) -> UserFeatures {
        let mut u = crate::testing::user(tz);
        if let Some((h, n)) = sessions_at_local_hour {
            for d in 0..5 {
                u.activity[d * 24 + h] = n as f32;
            }
            u.n_activity = 5 * n;
        }
        u
    }

    fn flat_pop() -> PopulationActivity {
        PopulationActivity {
            hour_of_week: vec![1.0 / 168.0; 168],
        }
    }

    #[test]
    fn the_fallback_match_ranks_alike_users_above_unalike_ones() {
        let a = user("UTC", None);
        let mut b = user("UTC", None);
        let ctx = crate::features::MatchContext::default();
        let same = match_fallback(&crate::features::match_features(&a, &a, &ctx));
        assert!((same.score - 1.0).abs() < 1e-6, "{same:?}");
        // Other interests, style and personality: every factor and the score drop.
        b.interests = crate::types::TagSet::from_names(&["nightlife", "beach"]);
        b.style_vector = [0.0, 1.0, 0.0];
        b.personality = [0.0, 1.0, 0.0, 1.0, 0.0];
        let other = match_fallback(&crate::features::match_features(&a, &b, &ctx));
        assert!(other.interest_overlap < same.interest_overlap);
        assert!(other.travel_style < same.travel_style);
        assert!(other.personality < same.personality);
        assert!(other.score < same.score);
        for v in [
            other.score,
            other.interest_overlap,
            other.travel_style,
            other.personality,
        ] {
            assert!((0.0..=1.0).contains(&v), "{other:?}");
        }
    }

    #[test]
    fn hour_spans_read_naturally() {
        assert_eq!(hour_span(14), "2-3pm");
        assert_eq!(hour_span(11), "11am-12pm");
        assert_eq!(hour_span(23), "11pm-12am");
        assert_eq!(hour_span(0), "12-1am");
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let q = QuietHours::default();
        assert!(q.contains(23) && q.contains(0) && q.contains(7));
        assert!(!q.contains(8) && !q.contains(21));
    }

    #[test]
    fn plan_picks_the_users_active_hour_outside_quiet_hours_and_in_the_future() {
        let u = user("Asia/Tokyo", Some((14, 6)));
        // Scores peak at 14:00 local on weekdays and (wrongly) at 3am: the policy must
        // skip 3am, a quiet hour, for a medium-urgency notification.
        let mut scores = vec![0.01f32; 168];
        for d in 0..7 {
            scores[d * 24 + 14] = 0.5;
            scores[d * 24 + 3] = 0.9;
        }
        let now = Utc.with_ymd_and_hms(2026, 7, 6, 0, 10, 0).unwrap(); // Monday 09:10 Tokyo
        let plan = plan_notification(&NotificationRequest {
            user: &u,
            scores: &scores,
            population: &flat_pop(),
            channel_prior: [0.5, 0.2, 0.4],
            kind: NotificationType::MatchFound,
            urgency: Urgency::Medium,
            now,
            policy: NotificationPolicy::default(),
        })
        .unwrap();
        assert!(plan.send_at > now);
        assert_eq!(
            plan.send_at.with_timezone(&parse_tz("Asia/Tokyo")).hour(),
            14
        );
        assert_eq!(
            plan.send_at,
            Utc.with_ymd_and_hms(2026, 7, 6, 5, 0, 0).unwrap()
        );
        assert_eq!(plan.reason, "Active around 2-3pm on weekdays");
        assert_ne!(
            plan.channel,
            Channel::Sms,
            "sms is kept for urgent notifications"
        );
    }

    /// Issue 34's example: a user in Singapore most active at 11pm on
    /// weekends, planned on a Monday morning with a day's window, gets 9pm
    /// (the model's best allowed hour) and a reason that says why not 11pm.
    #[test]
    fn the_reason_explains_the_chosen_time_and_what_ruled_out_the_busiest_hour() {
        let plan_for = |sessions: &[(usize, usize, f32)], model_hour: usize, urgency| {
            let mut u = crate::testing::user("Asia/Singapore");
            for &(day, hour, n) in sessions {
                u.activity[day * 24 + hour] = n;
            }
            u.n_activity = sessions.iter().map(|s| s.2 as u32).sum();
            let mut scores = vec![0.01f32; 168];
            for d in 0..7 {
                scores[d * 24 + model_hour] = 0.5;
            }
            // Monday 08:10 in Singapore.
            let now = Utc.with_ymd_and_hms(2026, 7, 6, 0, 10, 0).unwrap();
            plan_notification(&NotificationRequest {
                user: &u,
                scores: &scores,
                population: &flat_pop(),
                channel_prior: [0.5, 0.2, 0.4],
                kind: NotificationType::MatchFound,
                urgency,
                now,
                policy: NotificationPolicy::default(),
            })
            .unwrap()
        };
        let late_weekends = [(5, 23, 10.0), (6, 23, 10.0)];
        let p = plan_for(&late_weekends, 21, Urgency::Medium);
        assert_eq!(
            p.send_at.with_timezone(&parse_tz("Asia/Singapore")).hour(),
            21
        );
        assert_eq!(
            p.reason,
            "Active around 9-10pm on weekdays; 11pm-12am would be in quiet hours"
        );
        // A busiest hour outside quiet hours but on a weekend, which a day's
        // window from Monday does not reach.
        let weekend_afternoons = [(5, 14, 10.0), (6, 14, 10.0)];
        let p = plan_for(&weekend_afternoons, 14, Urgency::Medium);
        assert_eq!(
            p.reason,
            "Active around 2-3pm on weekdays; 2-3pm on weekends is not within the next 24 hours"
        );
        // A week's window reaches the weekend: the model's choice, said so.
        let p = plan_for(&weekend_afternoons, 14, Urgency::Low);
        assert_eq!(
            p.reason,
            "Active around 2-3pm on weekdays; rated above 2-3pm on weekends by the timing model"
        );
        // The busiest hour itself: nothing to explain away.
        let weekday_evenings: Vec<(usize, usize, f32)> = (0..5).map(|d| (d, 19, 4.0)).collect();
        let p = plan_for(&weekday_evenings, 19, Urgency::Medium);
        assert_eq!(p.reason, "Active around 7-8pm on weekdays");
        // The model preferred another hour that the window allowed.
        let p = plan_for(&weekday_evenings, 12, Urgency::Medium);
        assert_eq!(
            p.reason,
            "Active around 12-1pm on weekdays; rated above 7-8pm by the timing model"
        );
        // Little history: the population's pattern, said as such.
        let p = plan_for(&[(0, 19, 2.0)], 19, Urgency::Medium);
        assert!(
            p.reason
                .starts_with("Little activity on record yet, so timed for 7-8pm local time"),
            "{}",
            p.reason
        );
    }

    /// A plan for the Tokyo test user (busiest 2pm on weekdays, the model
    /// agreeing) under `policy`, Monday 09:10 local, match news at `urgency`.
    fn tokyo_plan(
        u: &UserFeatures,
        urgency: Urgency,
        policy: NotificationPolicy,
    ) -> Option<NotificationPlan> {
        let mut scores = vec![0.01f32; 168];
        for d in 0..7 {
            scores[d * 24 + 14] = 0.5;
            scores[d * 24 + 19] = 0.3;
        }
        plan_notification(&NotificationRequest {
            user: u,
            scores: &scores,
            population: &flat_pop(),
            channel_prior: [0.5, 0.2, 0.4],
            kind: NotificationType::MatchFound,
            urgency,
            now: Utc.with_ymd_and_hms(2026, 7, 6, 0, 10, 0).unwrap(),
            policy,
        })
    }

    #[test]
    fn only_channels_the_user_agreed_to_are_chosen_and_unknown_means_the_default() {
        let mut u = user("Asia/Tokyo", Some((14, 6)));
        // Email opened every time, push never: email wins when allowed.
        u.channel_sent = [20, 20, 0];
        u.channel_opened = [0, 20, 0];
        let policy = NotificationPolicy::default();
        let channel = |u: &UserFeatures, p| tokyo_plan(u, Urgency::Medium, p).map(|p| p.channel);
        // Nothing known: the default, push only.
        assert_eq!(channel(&u, policy), Some(Channel::Push));
        u.consent = [None, Some(true), None];
        assert_eq!(channel(&u, policy), Some(Channel::Email));
        // Email withdrawn: push, by default.
        u.consent = [None, Some(false), None];
        assert_eq!(channel(&u, policy), Some(Channel::Push));
        // Push refused and email unknown under a push-only default: nothing.
        u.consent = [Some(false), None, None];
        assert_eq!(channel(&u, policy), None);
        // SMS the only channel agreed to: used even when not urgent.
        u.consent = [Some(false), Some(false), Some(true)];
        assert_eq!(channel(&u, policy), Some(Channel::Sms));
        // A default of push and email applies where the app has no answer.
        u.consent = [None; 3];
        let both = NotificationPolicy {
            default_channels: [true, true, false],
            ..policy
        };
        assert_eq!(channel(&u, both), Some(Channel::Email));
    }

    #[test]
    fn the_cap_moves_a_non_urgent_send_to_the_first_time_it_allows_and_says_so() {
        let tokyo = parse_tz("Asia/Tokyo");
        let now = Utc.with_ymd_and_hms(2026, 7, 6, 0, 10, 0).unwrap();
        let mut u = user("Asia/Tokyo", Some((14, 6)));
        // Three notifications yesterday, 2:30, 3:30 and 4:30pm Tokyo: 2pm
        // today would make four within 24 hours; from 2:30pm on, two.
        u.recent_sends = [-19, -18, -17]
            .map(|h| now + Duration::hours(h) + Duration::minutes(20))
            .to_vec();
        let free = tokyo_plan(
            &u,
            Urgency::Medium,
            NotificationPolicy {
                cap: 0,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(free.send_at.with_timezone(&tokyo).hour(), 14);
        let capped = tokyo_plan(&u, Urgency::Medium, NotificationPolicy::default()).unwrap();
        let local = capped.send_at.with_timezone(&tokyo);
        let n_near = |u: &UserFeatures, at: DateTime<Utc>| {
            u.recent_sends
                .iter()
                .filter(|t| (**t - at).abs() < Duration::hours(24))
                .count()
        };
        assert_eq!(
            (local.day(), local.hour()),
            (6, 15),
            "the first hour after 2:30pm"
        );
        assert_eq!(n_near(&u, capped.send_at), 2);
        assert_eq!(
            capped.reason,
            "Active around 3-4pm on weekdays; 2-3pm on weekdays would go over the cap of 3 notifications in 24 hours, so this is the first hour the cap allows"
        );
        // A cap of 4 lets 2pm through; urgent notifications are never held back.
        let four = NotificationPolicy {
            cap: 4,
            ..Default::default()
        };
        assert_eq!(
            tokyo_plan(&u, Urgency::Medium, four).unwrap().send_at,
            free.send_at
        );
        let urgent = tokyo_plan(&u, Urgency::High, NotificationPolicy::default()).unwrap();
        assert!(urgent.send_at <= now + Duration::hours(3));
        assert!(!urgent.reason.contains("cap"));
        // A notification the app has already scheduled counts too: one at
        // 4:30pm today holds 3pm back as well; at 4pm, yesterday's 3:30pm
        // is a day away.
        u.recent_sends
            .push(now + Duration::hours(7) + Duration::minutes(20));
        let later = tokyo_plan(&u, Urgency::Medium, NotificationPolicy::default()).unwrap();
        assert_eq!(later.send_at.with_timezone(&tokyo).hour(), 16);
        assert_eq!(n_near(&u, later.send_at), 2);
    }

    #[test]
    fn urgent_notifications_go_out_soon_even_in_quiet_hours() {
        let u = user("Europe/Paris", Some((14, 6)));
        let scores = vec![0.1f32; 168];
        let now = Utc.with_ymd_and_hms(2026, 7, 6, 1, 0, 0).unwrap(); // 03:00 Paris
        let plan = plan_notification(&NotificationRequest {
            user: &u,
            scores: &scores,
            population: &flat_pop(),
            channel_prior: [0.5, 0.2, 0.4],
            kind: NotificationType::Message,
            urgency: Urgency::High,
            now,
            policy: NotificationPolicy::default(),
        })
        .unwrap();
        assert!(plan.send_at > now && plan.send_at <= now + Duration::hours(1));
    }

    /// Scores that peak at one local hour every day, in `tz`.
    fn peak_at(hour: usize) -> Vec<f32> {
        (0..168)
            .map(|h| if h % 24 == hour { 0.9 } else { 0.01 })
            .collect()
    }

    fn plan(
        tz: &str,
        scores: &[f32],
        now: DateTime<Utc>,
        urgency: Urgency,
        kind: NotificationType,
        quiet: QuietHours,
    ) -> NotificationPlan {
        let u = user(tz, Some((9, 3)));
        plan_notification(&NotificationRequest {
            user: &u,
            scores,
            population: &flat_pop(),
            channel_prior: [0.5, 0.2, 0.4],
            kind,
            urgency,
            now,
            policy: NotificationPolicy::with_quiet(quiet),
        })
        .unwrap()
    }

    #[test]
    fn daylight_saving_changes_are_followed() {
        // Paris springs forward on 2026-03-29: 09:00 local is 08:00 UTC the day
        // before and 07:00 UTC that Sunday.
        let now = Utc.with_ymd_and_hms(2026, 3, 28, 20, 30, 0).unwrap();
        let p = plan(
            "Europe/Paris",
            &peak_at(9),
            now,
            Urgency::Medium,
            NotificationType::MatchFound,
            QuietHours::default(),
        );
        assert_eq!(
            p.send_at,
            Utc.with_ymd_and_hms(2026, 3, 29, 7, 0, 0).unwrap()
        );
        // New York falls back on 2026-11-01: 08:00 local is 13:00 UTC that day.
        let now = Utc.with_ymd_and_hms(2026, 10, 31, 23, 0, 0).unwrap();
        let p = plan(
            "America/New_York",
            &peak_at(8),
            now,
            Urgency::Medium,
            NotificationType::MatchFound,
            QuietHours::default(),
        );
        assert_eq!(
            p.send_at,
            Utc.with_ymd_and_hms(2026, 11, 1, 13, 0, 0).unwrap()
        );
        // A half-hour zone: 14:xx local in Kolkata (UTC+05:30) is 09:00 UTC.
        let now = Utc.with_ymd_and_hms(2026, 7, 6, 0, 0, 0).unwrap();
        let p = plan(
            "Asia/Kolkata",
            &peak_at(14),
            now,
            Urgency::Medium,
            NotificationType::MatchFound,
            QuietHours::default(),
        );
        assert_eq!(
            p.send_at,
            Utc.with_ymd_and_hms(2026, 7, 6, 9, 0, 0).unwrap()
        );
        assert_eq!(
            p.send_at.with_timezone(&parse_tz("Asia/Kolkata")).hour(),
            14
        );
    }

    #[test]
    fn windows_follow_urgency_and_type() {
        // The user's best hour is 15:00 UTC; now is 16:00 UTC, so the next one is 23 h away.
        let now = Utc.with_ymd_and_hms(2026, 7, 6, 16, 0, 0).unwrap();
        let scores = peak_at(15);
        let q = QuietHours::default();
        let medium = plan(
            "UTC",
            &scores,
            now,
            Urgency::Medium,
            NotificationType::MatchFound,
            q,
        );
        assert_eq!(
            medium.send_at,
            Utc.with_ymd_and_hms(2026, 7, 7, 15, 0, 0).unwrap()
        );
        // A message is more urgent: its medium window is 12 h, so it cannot wait for 15:00.
        let message = plan(
            "UTC",
            &scores,
            now,
            Urgency::Medium,
            NotificationType::Message,
            q,
        );
        assert!(message.send_at <= now + Duration::hours(12) && message.send_at > now);
        // High urgency: within two hours, whatever the pattern.
        let high = plan(
            "UTC",
            &scores,
            now,
            Urgency::High,
            NotificationType::MatchFound,
            q,
        );
        assert!(high.send_at > now && high.send_at <= now + Duration::hours(2));
        // Low urgency: the best slot within a week, here tomorrow's 15:00 too.
        let low = plan(
            "UTC",
            &scores,
            now,
            Urgency::Low,
            NotificationType::Reminder,
            q,
        );
        assert_eq!(
            low.send_at,
            Utc.with_ymd_and_hms(2026, 7, 7, 15, 0, 0).unwrap()
        );
    }

    #[test]
    fn quiet_hours_are_configurable_and_respected_unless_urgent() {
        let now = Utc.with_ymd_and_hms(2026, 7, 6, 12, 0, 0).unwrap();
        let q = QuietHours { start: 20, end: 10 };
        let scores = peak_at(21);
        for urgency in [Urgency::Low, Urgency::Medium] {
            let p = plan(
                "UTC",
                &scores,
                now,
                urgency,
                NotificationType::MatchFound,
                q,
            );
            assert!(
                !q.contains(p.send_at.hour()),
                "{urgency:?} sent at {}",
                p.send_at
            );
            assert!(p.send_at > now);
        }
    }

    #[test]
    fn confidence_grows_with_history() {
        let none = user("UTC", None);
        let some = user("UTC", Some((9, 2)));
        let lots = user("UTC", Some((9, 40)));
        let c = |u: &UserFeatures| notification_confidence(u, 9);
        assert!(
            c(&none) < c(&some) && c(&some) < c(&lots),
            "{} {} {}",
            c(&none),
            c(&some),
            c(&lots)
        );
    }

    #[test]
    fn filters_admit_cheaper_places_and_matching_lengths() {
        let cat = builtin();
        let paris = cat.iter().find(|d| d.name == "Paris").unwrap();
        assert!(passes_filters(
            paris,
            Some(Budget::High),
            Some(TripDuration::Weekend)
        ));
        assert!(!passes_filters(paris, Some(Budget::Low), None));
        assert!(!passes_filters(paris, None, Some(TripDuration::Month)));
    }

    #[test]
    fn match_confidence_tracks_distance_from_the_boundary() {
        assert!(match_confidence(0.95, 1.0) > match_confidence(0.6, 1.0));
        assert!(match_confidence(0.05, 1.0) > match_confidence(0.4, 1.0));
        assert!(match_confidence(0.95, 0.5) < match_confidence(0.95, 1.0));
    }

    #[test]
    fn a_message_weighs_only_the_hours_of_its_window() {
        let u = user("Europe/Paris", Some((14, 6)));
        // Monday 12:10 Paris: a message at medium urgency has a 12-hour
        // window, of which 22:00-00:10 is quiet.
        let now = Utc.with_ymd_and_hms(2026, 7, 6, 10, 10, 0).unwrap();
        let hours = plan_slots(
            &u,
            NotificationType::Message,
            Urgency::Medium,
            now,
            &NotificationPolicy::default(),
        )
        .hours();
        assert_eq!(hours, (12..22).collect::<Vec<_>>());
        // A reminder at low urgency may go out any time in the week.
        let all = plan_slots(
            &u,
            NotificationType::Reminder,
            Urgency::Low,
            now,
            &NotificationPolicy::default(),
        )
        .hours();
        assert_eq!(all.len(), 168 - 7 * 10);
    }

    proptest::proptest! {
        /// A non-urgent plan never goes over the cap, whatever the user's
        /// recent and scheduled notifications, clock, zone and scores; an
        /// urgent one is never held back.
        #[test]
        fn a_plan_keeps_every_day_under_the_cap(
            secs in 1_767_225_600i64..1_830_297_600,
            zone in 0usize..6,
            kind in 0usize..3,
            cap in 1u32..5,
            sends in proptest::collection::vec(-30i64 * 60..30 * 60, 0..8),
            scores in proptest::collection::vec(0.0f32..1.0, 168),
        ) {
            let zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"];
            let mut u = user(zones[zone], Some((9, 3)));
            let now = Utc.timestamp_opt(secs, 0).unwrap();
            u.recent_sends = sends.iter().map(|m| now + Duration::minutes(*m)).collect();
            u.recent_sends.sort_unstable();
            let kind = [NotificationType::MatchFound, NotificationType::Message, NotificationType::Reminder][kind];
            let policy = NotificationPolicy { cap, ..Default::default() };
            for urgency in [Urgency::Low, Urgency::Medium, Urgency::High] {
                let p = plan_notification(&NotificationRequest {
                    user: &u,
                    scores: &scores,
                    population: &flat_pop(),
                    channel_prior: [0.5, 0.2, 0.4],
                    kind,
                    urgency,
                    now,
                    policy,
                })
                .unwrap();
                proptest::prop_assert!(p.send_at > now);
                let near = u.recent_sends.iter().filter(|t| (**t - p.send_at).abs() < Duration::hours(24)).count();
                if urgency == Urgency::High {
                    proptest::prop_assert!(p.send_at <= now + send_window(urgency, kind) + Duration::hours(1));
                } else {
                    proptest::prop_assert!(near < cap as usize, "{near} near {:?}", p);
                }
            }
        }

        /// The plan reads no score outside its slots' hours: with every other
        /// hour's score set above any real one (it would win if read), the
        /// plan is the same, for any clock, zone, policy and scores.
        #[test]
        fn a_plan_reads_only_the_scores_of_its_hours(
            secs in 1_767_225_600i64..1_830_297_600,
            zone in 0usize..6,
            urgency in 0usize..3,
            kind in 0usize..3,
            quiet in (0u32..24, 0u32..24),
            scores in proptest::collection::vec(0.0f32..1.0, 168),
        ) {
            let zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"];
            let u = user(zones[zone], Some((9, 3)));
            let now = Utc.timestamp_opt(secs, 0).unwrap();
            let urgency = [Urgency::Low, Urgency::Medium, Urgency::High][urgency];
            let kind = [NotificationType::MatchFound, NotificationType::Message, NotificationType::Reminder][kind];
            let quiet = QuietHours { start: quiet.0, end: quiet.1 };
            let hours = plan_slots(&u, kind, urgency, now, &NotificationPolicy::with_quiet(quiet)).hours();
            let mut poisoned = vec![10.0f32; 168];
            for &h in &hours {
                poisoned[h] = scores[h];
            }
            proptest::prop_assert_eq!(
                plan(zones[zone], &poisoned, now, urgency, kind, quiet),
                plan(zones[zone], &scores, now, urgency, kind, quiet)
            );
        }

        /// The slots, made with one conversion to local time per hour, are
        /// those of the former way (two conversions: quiet hours, then the
        /// hour of the week), for any clock, zone and policy.
        #[test]
        fn slots_are_those_of_two_conversions_per_hour(
            secs in 1_767_225_600i64..1_830_297_600,
            zone in 0usize..6,
            urgency in 0usize..3,
            kind in 0usize..3,
            quiet in (0u32..24, 0u32..24),
        ) {
            let zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"];
            let u = user(zones[zone], None);
            let now = Utc.timestamp_opt(secs, 0).unwrap();
            let urgency = [Urgency::Low, Urgency::Medium, Urgency::High][urgency];
            let kind = [NotificationType::MatchFound, NotificationType::Message, NotificationType::Reminder][kind];
            let quiet = QuietHours { start: quiet.0, end: quiet.1 };
            let got = plan_slots(&u, kind, urgency, now, &NotificationPolicy::with_quiet(quiet));
            proptest::prop_assert_eq!(got.slots, reference_slots(&u, kind, urgency, now, quiet));
        }

        /// Reasons written into one buffer read as those built from joined
        /// strings did, for any history names, visits and interests.
        #[test]
        fn reasons_read_as_joined_strings_did(
            names in proptest::collection::vec(("[A-Za-z _]{0,12}", proptest::bool::ANY), 0..3),
            tags in 0u32..(1 << TAGS.len()),
            budget in 0usize..3,
            duration in 0usize..3,
        ) {
            let items: Vec<(&str, bool)> = names.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let interests = TagSet(tags);
            let budget = Budget::ALL[budget % Budget::ALL.len()];
            let duration = TripDuration::ALL[duration % TripDuration::ALL.len()];
            for driver in [
                RecDriver::History(&items),
                RecDriver::Profile { interests, budget, duration },
                RecDriver::Popularity,
            ] {
                proptest::prop_assert_eq!(recommendation_reason(&driver), reference_reason(&driver));
            }
        }

        /// The two strongest shares are the first two of a stable sort by
        /// descending share of those above zero (ties in input order).
        #[test]
        fn the_strongest_two_are_the_first_two_of_a_stable_sort(
            shares in proptest::collection::vec(
                proptest::prop_oneof![Just(0.0f32), Just(0.5f32), Just(-0.25f32), Just(f32::NAN), 0.0f32..1.0],
                0..12,
            ),
        ) {
            let mut items: Vec<(f32, usize)> = shares
                .iter()
                .enumerate()
                .map(|(i, s)| (*s, i))
                .filter(|(s, _)| *s > 0.0)
                .collect();
            items.sort_by(|a, b| b.0.total_cmp(&a.0));
            items.truncate(2);
            let (top, n) = strongest_two(shares.iter().enumerate().map(|(i, s)| (*s, i)));
            proptest::prop_assert_eq!(&top[..n], &items[..]);
        }
    }

    use proptest::strategy::Just;

    #[test]
    fn a_mask_names_exactly_the_listed_destinations() {
        let mask = destination_mask(&[2, 5, 3]);
        let named: Vec<usize> = (0..10)
            .filter(|d| mask.get(*d).is_some_and(|m| *m))
            .collect();
        assert_eq!(named, vec![2, 3, 5]);
        assert!(destination_mask(&[]).is_empty());
    }

    #[test]
    fn a_match_context_reads_the_destination_by_name_and_the_trip_interests() {
        let cat = Catalogue::new(builtin());
        let d = 3;
        // Names match whatever their case and surrounding spaces.
        let name = format!("  {}  ", cat.destinations[d].name.to_uppercase());
        let interests = vec!["food".to_string(), "not a tag".to_string()];
        let ctx = match_context(&cat, Some(&name), &interests);
        assert_eq!(ctx.destination_tags, Some(cat.tags[d]));
        assert_eq!(ctx.interests, TagSet::from_names(&["food"]));
        assert!(ctx.semantic_interests.is_none());
        // An unknown place or none at all: no destination tags.
        let ctx = match_context(&cat, Some("Atlantis"), &[]);
        assert_eq!(ctx.destination_tags, None);
        assert_eq!(ctx.interests, TagSet::default());
        assert_eq!(match_context(&cat, None, &[]).destination_tags, None);
    }

    /// The slots as they were made before `plan_slots`: two conversions to
    /// local time per hour.
    fn reference_slots(
        user: &UserFeatures,
        kind: NotificationType,
        urgency: Urgency,
        now: DateTime<Utc>,
        quiet: QuietHours,
    ) -> Vec<Slot> {
        let tz = parse_tz(&user.timezone);
        let earliest = now + Duration::minutes(1);
        let window_end = now + send_window(urgency, kind);
        let hour0 = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
        let mut out = Vec::new();
        for k in 0..=HOURS_PER_WEEK as i64 {
            let at = if k == 0 {
                earliest
            } else {
                hour0 + Duration::hours(k)
            };
            if at > window_end && !out.is_empty() {
                break;
            }
            if urgency != Urgency::High && quiet.contains(at.with_timezone(&tz).hour()) {
                continue;
            }
            out.push(Slot {
                k,
                at,
                hour_of_week: crate::features::hour_of_week(at, &tz),
                capped: false,
            });
            if at > window_end {
                break;
            }
        }
        out
    }

    /// The reasons as they were written before: names collected, joined,
    /// formatted.
    fn reference_reason(driver: &RecDriver) -> String {
        fn join_and(items: &[String]) -> String {
            match items.len() {
                0 => String::new(),
                1 => items[0].clone(),
                n => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
            }
        }
        match driver {
            RecDriver::History(items) if !items.is_empty() => {
                let went = items.iter().all(|(_, v)| *v);
                let names: Vec<String> = items.iter().map(|(n, _)| n.to_string()).collect();
                format!(
                    "Because you {} {}",
                    if went { "visited" } else { "explored" },
                    join_and(&names)
                )
            }
            RecDriver::Profile { interests, .. } if !interests.is_empty() => {
                let names: Vec<String> = interests
                    .names()
                    .into_iter()
                    .take(2)
                    .map(|t| t.replace('_', " "))
                    .collect();
                format!("Matches your interest in {}", join_and(&names))
            }
            RecDriver::Profile {
                budget, duration, ..
            } => {
                format!("Fits your {budget} budget and {duration} trips")
            }
            _ => "Popular with travellers like you".into(),
        }
    }
}
