//! `POST /notifications/optimize`: when and how to send a notification. The
//! model scores the user's activity by local hour of the week; the policy
//! (`ml_core::post`: quiet hours, urgency, the send window, the frequency
//! cap, the channels the user agreed to and their open rates) turns the
//! scores into a send time, a channel and a reason. A user who agreed to no
//! channel gets no plan (409). When the model answers each row on its own,
//! only the hours the plan weighs run.

use super::endpoint::{Call, Endpoint};
use super::Predictor;
use crate::api::{round4, NotifyRequest, NotifyResponse};
use crate::error::ServiceError;
use crate::lifecycle::ServedModel;
use chrono::{DateTime, SecondsFormat, Utc};
use ml_core::features::{self, UserFeatures, HOURS_PER_WEEK};
use ml_core::model::ModelKind;
use ml_core::post;
use ml_core::types::Channel;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub(super) struct Notify;

/// The user, the channel, the plan's slots and the hours the model ran on.
pub(super) struct Plan {
    user: Arc<UserFeatures>,
    channel: Channel,
    slots: post::PlanSlots,
    hours: Vec<usize>,
}

impl Endpoint<1> for Notify {
    type Request = NotifyRequest;
    type Response = NotifyResponse;
    type Prepared = Plan;
    const NAME: &'static str = "notify";
    const MODEL: ModelKind = ModelKind::NotificationTiming;

    /// Every field is checked as it is parsed (enums).
    fn validate(_: &NotifyRequest) -> Result<(), ServiceError> {
        Ok(())
    }

    fn users(req: &NotifyRequest) -> [(&'static str, Uuid); 1] {
        [("user_id", req.user_id)]
    }

    /// The population's activity under the same policy for a user known
    /// only by id. Their time zone is unknown too, so quiet hours are kept
    /// in UTC and the answer claims no confidence (the caller sees
    /// `fallback`).
    fn without_data(p: &Predictor, call: &Call<NotifyRequest>) -> NotifyResponse {
        let u = UserFeatures::from_activity(call.req.user_id, "UTC", &[]);
        let m = &call.m;
        // What the user agreed to is unknown too: the policy's default,
        // which the settings never leave empty.
        let channel = post::notification_channel(
            &u,
            call.req.urgency,
            m.channel_prior,
            &p.notification_policy,
        )
        .unwrap_or(Channel::Push);
        let (mut body, _) = plan(
            p,
            m,
            &u,
            &m.population.hour_of_week,
            call.req,
            call.now,
            (None, channel),
        );
        body.confidence = 0.0;
        body.reason = format!(
            "User data unavailable: {} (time zone unknown, UTC assumed)",
            body.reason
        );
        body
    }

    async fn prepare(
        p: &Predictor,
        call: &Call<'_, NotifyRequest>,
        [user]: [Arc<UserFeatures>; 1],
    ) -> Result<(Plan, Vec<f32>, usize), ServiceError> {
        let (m, req) = (&call.m, call.req);
        let channel =
            post::notification_channel(&user, req.urgency, m.channel_prior, &p.notification_policy)
                .ok_or(ServiceError::NoConsentedChannel { id: req.user_id })?;
        // The plan reads the scores of its hours only (those of the send
        // window, ~10 for a message): when the model answers each row on its
        // own, those rows give the answer all 168 would.
        let slots = post::plan_slots(
            &user,
            req.notification_type,
            req.urgency,
            call.now,
            &p.notification_policy,
        );
        let hours: Vec<usize> = if p.timing_plan_hours && m.rows_independent {
            slots.hours()
        } else {
            (0..HOURS_PER_WEEK).collect()
        };
        let x = features::timing_rows(&user, &m.population, &hours);
        let n = hours.len();
        let plan = Plan {
            user,
            channel,
            slots,
            hours,
        };
        Ok((plan, x, n))
    }

    /// The documented default: the population's activity by hour of week
    /// stands in for the user's, under the same policy (quiet hours,
    /// urgency, channel).
    fn without_model(p: &Predictor, call: &Call<NotifyRequest>, plan_: &Plan) -> NotifyResponse {
        let m = &call.m;
        plan(
            p,
            m,
            &plan_.user,
            &m.population.hour_of_week,
            call.req,
            call.now,
            (Some(&plan_.slots), plan_.channel),
        )
        .0
    }

    /// The send time and channel. The plan is greedy (the best slot the
    /// policy allows, always), so the probability it gave its choice, the
    /// propensity an offline evaluation of another policy needs, is 1.
    fn decision(body: &NotifyResponse) -> (Option<f32>, String) {
        #[derive(serde::Serialize)]
        struct D<'a> {
            send_at: &'a str,
            channel: Channel,
            propensity: f32,
            confidence: f32,
        }
        let d = D {
            send_at: &body.send_at,
            channel: body.channel,
            propensity: 1.0,
            confidence: body.confidence,
        };
        (
            Some(body.confidence),
            serde_json::to_string(&d).unwrap_or_default(),
        )
    }

    /// The plan on the model's scores, cached until it would change (the
    /// next quarter hour, or its send time if sooner).
    fn answer(
        p: &Predictor,
        call: &Call<NotifyRequest>,
        Plan {
            user,
            channel,
            slots,
            hours,
        }: Plan,
        mut out: Vec<Vec<f32>>,
    ) -> (NotifyResponse, Duration) {
        let scores = by_hour_of_week(&hours, out.swap_remove(0));
        let (body, send_at) = plan(
            p,
            &call.m,
            &user,
            &scores,
            call.req,
            call.now,
            (Some(&slots), channel),
        );
        (body, post::plan_valid_for(call.now, send_at))
    }
}

/// Scores by hour of the week from the scores of `hours` (in that order);
/// hours without a score are NaN, which a plan never reads.
fn by_hour_of_week(hours: &[usize], scores: Vec<f32>) -> Vec<f32> {
    if hours.len() == HOURS_PER_WEEK && hours.iter().enumerate().all(|(i, &h)| i == h) {
        return scores;
    }
    let mut all = vec![f32::NAN; HOURS_PER_WEEK];
    for (&h, s) in hours.iter().zip(scores) {
        all[h] = s;
    }
    all
}

/// The notification policy on activity `scores` (one per local hour of the
/// week); the answer and its send time. `slots`: those already made for
/// this user, request and clock, if any; `channel`: the one chosen.
fn plan(
    p: &Predictor,
    m: &ServedModel,
    u: &UserFeatures,
    scores: &[f32],
    req: &NotifyRequest,
    now: DateTime<Utc>,
    (slots, channel): (Option<&post::PlanSlots>, Channel),
) -> (NotifyResponse, DateTime<Utc>) {
    let r = post::NotificationRequest {
        user: u,
        scores,
        population: &m.population,
        channel_prior: m.channel_prior,
        kind: req.notification_type,
        urgency: req.urgency,
        now,
        policy: p.notification_policy,
    };
    let made;
    let slots = match slots {
        Some(slots) => slots,
        None => {
            made = post::plan_slots(u, req.notification_type, req.urgency, now, &r.policy);
            &made
        }
    };
    let plan = post::plan_notification_in(&r, slots, channel);
    let body = NotifyResponse {
        send_at: plan.send_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        channel: plan.channel,
        confidence: round4(plan.confidence),
        reason: plan.reason,
        fallback: false,
    };
    (body, plan.send_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_of_some_hours_fill_their_hours_of_the_week() {
        let all: Vec<usize> = (0..HOURS_PER_WEEK).collect();
        let scores: Vec<f32> = (0..HOURS_PER_WEEK).map(|h| h as f32).collect();
        assert_eq!(by_hour_of_week(&all, scores.clone()), scores);
        let week = by_hour_of_week(&[5, 170 - 3], vec![0.5, 0.25]);
        assert_eq!(week.len(), HOURS_PER_WEEK);
        assert_eq!((week[5], week[167]), (0.5, 0.25));
        assert!(week
            .iter()
            .enumerate()
            .all(|(h, s)| h == 5 || h == 167 || s.is_nan()));
    }
}
