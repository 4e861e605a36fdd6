//! Audience runs in the service (contract v2, one-to-many campaigns), on the mock cluster: two
//! replicas give a run to the customers of the partitions each owns, and together send what
//! `journey simulate` sends for the same events; a restart gives no run twice.

mod common;

use common::*;
use journeyd_types::{time, Value};
use std::time::Duration;

fn campaign(at: i64) -> String {
    format!(
        "journey: gold_offer\nversion: 1\nentry:\n  audience: {{ at: \"{}\" }}\n  if: has(profile.tier) && profile.tier == \"gold\"\nsteps:\n  - id: offer\n    send: {{ channel: email, template: gold_offer }}\n",
        time::format_rfc3339(at)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reaches_every_partitions_customers_as_the_simulator_says_and_only_once() {
    let t = now();
    // The run some seconds from now: the customers are known by then (checked below).
    let run_at = (t / 1000 + 15) * 1000;
    let rig = Rig::new(&[("gold.yaml", &campaign(run_at))]);
    let first = rig.start(rig.config());
    let second_config = rig.second_config();
    let second = rig.start(second_config.clone());
    first.until_ready().await;
    second.until_ready().await;

    let customers: Vec<String> = (0..40).map(|i| format!("aud-{i:02}")).collect();
    let events: Vec<_> = customers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut e = event(&format!("p{i}"), c, "profile_updated", None, t);
            let tier = if i % 3 == 0 { "gold" } else { "silver" };
            e.attributes.insert("tier".into(), Value::from(tier));
            e
        })
        .collect();
    rig.publish(&events).await;
    let held = |r: &Running| {
        customers
            .iter()
            .filter(|c| r.shared.store.customer(c).unwrap().is_some())
            .count()
    };
    while held(&first) + held(&second) < customers.len() {
        assert!(
            now() < run_at - 500,
            "the machine was too slow: the customers were not known before the run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = simulated(&rig, &events, run_at + 1000);
    assert_eq!(expected.len(), 14, "one offer per gold customer");
    let mut reader = rig.reader();
    until_every_expected(&mut reader, &expected, Duration::from_secs(40)).await;
    assert_eq!(
        reader.actions.len(),
        expected.len(),
        "{:#?}",
        reader.actions
    );
    for a in &reader.actions {
        assert_eq!(a.created_at, run_at, "sent at the run's time: {a:?}");
    }
    let held = |r: &Running| {
        customers
            .iter()
            .filter(|c| r.shared.store.customer(c).unwrap().is_some())
            .count()
    };
    assert!(
        held(&first) > 0 && held(&second) > 0,
        "both replicas ran some"
    );

    // A restart (after the session timeout, as tansu and the mock want) gives no run again.
    second.stop().await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let second = rig.start(second_config);
    second.until_ready().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    reader.settle(Duration::from_secs(1)).await;
    assert_eq!(
        reader.actions.len(),
        expected.len(),
        "nobody is sent the offer twice"
    );
    first.stop().await;
    second.stop().await;
}
