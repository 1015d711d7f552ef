//! The pure transform (no broker): webhooks per second through
//! `Normalizer::process`, alone and with the Avro decode of the input and the
//! encode of the outputs around it.
//!
//! ```sh
//! cargo bench -p si-normalize --bench transform
//! ```

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use si_consent_gate::{ANY_SCOPE, ConsentGate};
use si_normalize::ids::AddressHasher;
use si_normalize::{NormalizeMetrics, Normalizer, Settings};
use si_runtime::processor::{Processor, RecordContext};
use si_runtime::state::StateStore;
use si_runtime::table::GlobalTable;
use si_schemas::AvroRecord;
use si_schemas::codec::{decode_datum, encode_datum};
use si_schemas::records::{
    ComplianceSource, ConsentState, ConsentStatus, ConversationEvent, NormalizeState, TwilioWebhook,
};
use si_schemas::topics;

fn normalizer() -> Normalizer {
    let identity = GlobalTable::from_entries(
        topics::IDENTITY,
        common::identities().into_iter().map(|i| (i.key(), i)),
    );
    let directory = GlobalTable::from_entries(topics::PARTICIPANTS, []);
    // Every user opted in for every sender, as after a first contact: each
    // event's compliance tags cost a lookup that finds something.
    let consent = GlobalTable::from_entries(
        topics::CONSENT,
        common::identities().into_iter().map(|i| {
            let state = ConsentState {
                address: i.address,
                channel: i.channel,
                sender_scope: ANY_SCOPE.to_owned(),
                status: ConsentStatus::OptedIn,
                source: ComplianceSource::FirstContact,
                decided_at: 0,
                updated_at: 0,
                keyword: None,
                event_ref: None,
            };
            (state.key(), state)
        }),
    );
    let registry = GlobalTable::from_entries(topics::CONSENT_REGISTRY, []);
    Normalizer::new(
        Settings {
            hasher: AddressHasher::new(b"bench"),
            ..Settings::default()
        },
        identity,
        directory,
        NormalizeMetrics::unregistered(),
    )
    .with_consent(ConsentGate::from_tables(consent, registry))
}

fn bench(c: &mut Criterion) {
    // Distinct events only (the workload's retries would be dropped early).
    let (records, _) = common::workload(1_000, 7);
    let mut seen = std::collections::HashSet::new();
    let webhooks: Vec<TwilioWebhook> = records
        .into_iter()
        .map(|(_, w)| w)
        .filter(|w| {
            seen.insert(
                w.idempotency_token
                    .clone()
                    .unwrap_or_else(|| w.webhook_id.clone()),
            )
        })
        .collect();
    let datums: Vec<Vec<u8>> = webhooks.iter().map(|w| encode_datum(w).unwrap()).collect();
    let n = webhooks.len() as u64;
    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements(n));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("transform", |b| {
        let mut normalizer = normalizer();
        b.iter_batched(
            || {
                (
                    webhooks.clone(),
                    StateStore::<NormalizeState>::new(Duration::from_secs(3600)),
                )
            },
            |(inputs, mut store)| {
                for w in inputs {
                    let ctx = RecordContext::for_test(topics::WEBHOOKS, common::T0);
                    store.set_now(common::T0);
                    std::hint::black_box(normalizer.process(&ctx, w, &mut store).unwrap());
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("decode+transform+encode", |b| {
        let mut normalizer = normalizer();
        b.iter_batched(
            || StateStore::<NormalizeState>::new(Duration::from_secs(3600)),
            |mut store| {
                for datum in &datums {
                    let w: TwilioWebhook = decode_datum(TwilioWebhook::schema(), datum).unwrap();
                    let ctx = RecordContext::for_test(topics::WEBHOOKS, common::T0);
                    store.set_now(common::T0);
                    for output in normalizer.process(&ctx, w, &mut store).unwrap() {
                        if let Some(e) = output.record::<ConversationEvent>() {
                            std::hint::black_box(encode_datum(e).unwrap());
                        }
                    }
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
