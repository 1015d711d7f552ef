//! `sictl consent set` and `sictl consent show` against the real local broker and
//! registry: an operator's decision lands on both topics with source API, is in
//! force at once, and a newer registry decision overrides it.

mod support;

use std::time::Duration;

use anyhow::Context as _;
use si_schemas::records::{
    Channel, ComplianceEvent, ComplianceEventKind, ComplianceSource, ConsentState, ConsentStatus,
};
use si_schemas::topics;
use si_testkit::TestEnv;

const USER: &str = "+14155550100";

/// `sictl consent args…` against `env`.
fn sictl(env: &TestEnv, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    support::sictl(env, &[&["consent"], args].concat())
}

fn show(env: &TestEnv) -> anyhow::Result<serde_json::Value> {
    let (ok, out, err) = sictl(env, &["show", "--address", USER, "--channel", "sms"])?;
    anyhow::ensure!(ok, "show failed: {err}");
    Ok(serde_json::from_str(&out)?)
}

#[tokio::test]
async fn an_operator_opt_out_is_recorded_in_force_and_yields_to_a_newer_registry_opt_in()
-> anyhow::Result<()> {
    let env = TestEnv::start().await?;

    // Refused input writes nothing and says why.
    let (ok, _, err) = sictl(
        &env,
        &[
            "set",
            "--address",
            "4155550100",
            "--channel",
            "sms",
            "--status",
            "opted-out",
            "--issued-by",
            "ops",
        ],
    )?;
    assert!(!ok);
    assert!(err.contains("E.164"), "{err}");
    let nothing = show(&env)?;
    assert!(nothing["in_force"].is_null(), "{nothing}");
    assert_eq!(nothing["allowed_implied"], true);
    assert_eq!(nothing["allowed_explicit"], false);

    let (ok, out, err) = sictl(
        &env,
        &[
            "set",
            "--address",
            USER,
            "--channel",
            "sms",
            "--status",
            "opted-out",
            "--issued-by",
            "ops@example.test",
            "--reason",
            "asked by e-mail",
        ],
    )?;
    assert!(ok, "{err}");
    let recorded: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(recorded["consent_key"], format!("sms:{USER}|*"));

    let states = env
        .read::<ConsentState>(topics::CONSENT, 1, Duration::from_secs(30))
        .await?;
    let (key, state) = &states[0];
    assert_eq!(key.as_deref(), Some(format!("sms:{USER}|*").as_str()));
    assert_eq!(state.status, ConsentStatus::OptedOut);
    assert_eq!(state.source, ComplianceSource::Api);
    let events = env
        .read::<ComplianceEvent>(topics::COMPLIANCE, 1, Duration::from_secs(30))
        .await?;
    let (key, event) = &events[0];
    assert_eq!(key.as_deref(), Some(format!("sms:{USER}").as_str()));
    assert_eq!(event.kind, ComplianceEventKind::OptOut);
    assert_eq!(event.source, ComplianceSource::Api);
    assert_eq!(event.at, state.decided_at);
    assert_eq!(Some(&event.event_id), state.event_ref.as_ref());
    assert_eq!(event.details["issued_by"], "ops@example.test");
    assert_eq!(event.details["reason"], "asked by e-mail");

    let shown = show(&env)?;
    assert_eq!(shown["in_force"]["status"], "OPTED_OUT", "{shown}");
    assert_eq!(shown["in_force"]["source"], "API", "{shown}");
    assert_eq!(shown["allowed_implied"], false);

    // The user opts in again on Si's website: the registry's newer decision wins.
    let registry_opt_in = ConsentState {
        address: USER.into(),
        channel: Channel::Sms,
        sender_scope: "*".into(),
        status: ConsentStatus::OptedIn,
        source: ComplianceSource::Registry,
        decided_at: state.decided_at + 1,
        updated_at: state.decided_at + 1,
        keyword: None,
        event_ref: None,
    };
    env.produce(
        topics::CONSENT_REGISTRY,
        &registry_opt_in.key(),
        &registry_opt_in,
    )
    .await?;
    let shown = show(&env)?;
    assert_eq!(shown["in_force"]["status"], "OPTED_IN", "{shown}");
    assert_eq!(shown["in_force"]["source"], "REGISTRY", "{shown}");
    assert_eq!(shown["allowed_explicit"], true);
    let tables: Vec<&str> = shown["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["table"].as_str())
        .collect();
    assert_eq!(tables, [topics::CONSENT, topics::CONSENT_REGISTRY]);
    Ok(())
}
