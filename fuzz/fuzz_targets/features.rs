//! Two users' data as JSON (`[history_a, history_b]`, the shape the data
//! store hands the feature code) through every feature function and the
//! post-processing that reads them: no panic, and every value finite.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use ml_core::catalogue::{builtin, Catalogue};
use ml_core::features::{
    match_features, timing_features, InterestRarity, InterestSpace, PopulationActivity,
    UserFeatures,
};
use ml_core::types::UserHistory;
use std::sync::OnceLock;

fn catalogue() -> &'static Catalogue {
    static C: OnceLock<Catalogue> = OnceLock::new();
    C.get_or_init(|| Catalogue::new(builtin()))
}

fuzz_target!(|data: &[u8]| {
    let Ok((a, b)) = serde_json::from_slice::<(UserHistory, UserHistory)>(data) else {
        return;
    };
    let (Some(pa), Some(pb)) = (&a.profile, &b.profile) else {
        return;
    };
    let cat = catalogue();
    let now = Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap();
    let fa = UserFeatures::from_history(pa, &a, cat, now);
    let mut fb = UserFeatures::from_history(pb, &b, cat, now);
    // Soft interest profiles (what an embedding model gives) from the input's
    // bytes: one user and the context have them, the other user not.
    let soft =
        |k: usize| std::array::from_fn(|i| data.get(i * k).copied().unwrap_or(0) as f32 / 255.0);
    fb.semantic_interests = Some(soft(3));
    let interests: Vec<String> = pa.interests.iter().take(8).cloned().collect();
    let mut ctx =
        ml_core::post::match_context(cat, pa.interests.first().map(String::as_str), &interests);
    ctx.semantic_interests = Some(soft(5));
    // Free-text interests weighed by a rarity table of the two users.
    ctx.rarity = Some(std::sync::Arc::new(InterestRarity::of(
        [pa.interests.as_slice(), pb.interests.as_slice()].into_iter(),
    )));
    let x = match_features(&fa, &fb, &ctx);
    assert!(x.iter().all(|v| v.is_finite()), "match features {x:?}");
    let f = ml_core::post::match_fallback(&x);
    assert!((0.0..=1.0).contains(&f.score), "{f:?}");
    let pop = PopulationActivity::from_users([&fa, &fb].into_iter());
    let t = timing_features(&fa, &pop);
    assert!(t.iter().all(|v| v.is_finite()), "timing features");
    for space in [InterestSpace::Exact, InterestSpace::Semantic] {
        for u in [&fa, &fb] {
            let r = ml_core::inputs::rec_input(u, cat.len(), space);
            assert!(r.iter().all(|v| v.is_finite()), "recommendation input");
        }
    }
    // Consent and the frequency cap come from the input too; a user who
    // agreed to no channel gets no plan.
    let plan = ml_core::post::plan_notification(&ml_core::post::NotificationRequest {
        user: &fa,
        scores: &pop.hour_of_week,
        population: &pop,
        channel_prior: [0.3, 0.2, 0.1],
        kind: ml_core::types::NotificationType::Message,
        urgency: ml_core::types::Urgency::Medium,
        now,
        policy: ml_core::post::NotificationPolicy::default(),
    });
    if let Some(plan) = plan {
        assert!(plan.send_at > now, "{plan:?}");
    }
});
