//! Channel metrics of the messages segment tracks
//! ([`super::DeliveryMetrics`]): counted when egress's ACCEPTED status of a
//! message is read (sent, segments, estimated cost) and when its first final
//! delivery report is (deliveries, time to delivered). Only messages
//! segment remembers are counted: its own, while remediation tracks them.

use std::time::Duration;

use si_consent_gate::SenderClass;
use si_schemas::records::{DeliveryState, OutboundOperation, SegmentSent};

use super::Segmenter;
use crate::pricing::{UNKNOWN_COUNTRY, country_of};

/// The `status` label of a final delivery report; `None` for the others.
#[must_use]
pub fn final_status(report: DeliveryState) -> Option<&'static str> {
    Some(match report {
        DeliveryState::Delivered => "delivered",
        DeliveryState::Read => "read",
        DeliveryState::Undelivered => "undelivered",
        DeliveryState::Failed => "failed",
        _ => return None,
    })
}

fn operation(sent: &SegmentSent) -> Option<OutboundOperation> {
    serde_json::from_str(&sent.operation_json).ok()
}

impl Segmenter {
    /// Egress's ACCEPTED status of `sent`, with Twilio's segment count.
    pub(super) fn observe_accepted(&self, sent: &SegmentSent, segments: Option<i32>) {
        let Some(op) = operation(sent) else {
            return;
        };
        let metrics = &self.metrics.delivery;
        let channel = op.channel.key_prefix();
        metrics
            .sent
            .with_label_values(&[channel, SenderClass::of(&op.sender_key).label()])
            .inc();
        let segments = segments
            .or(op.segments)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(1);
        metrics
            .segments_per_message
            .with_label_values(&[channel])
            .observe(f64::from(segments));
        let country = op
            .to
            .as_deref()
            .map_or_else(|| UNKNOWN_COUNTRY.to_owned(), country_of);
        if let Some(cost) = self
            .settings
            .prices
            .estimate(op.channel, &country, segments)
        {
            metrics
                .estimated_cost_usd
                .with_label_values(&[channel, &country])
                .inc_by(cost);
        }
    }

    /// The first final delivery report of `sent` (`status` from
    /// [`final_status`]), recorded at `at`.
    pub(super) fn observe_final(&self, sent: &SegmentSent, status: &str, at: i64) {
        let Some(op) = operation(sent) else {
            return;
        };
        let metrics = &self.metrics.delivery;
        let channel = op.channel.key_prefix();
        metrics
            .deliveries
            .with_label_values(&[channel, SenderClass::of(&op.sender_key).label(), status])
            .inc();
        if matches!(status, "delivered" | "read")
            && let Some(accepted_at) = sent.accepted_at
        {
            // A report read before egress's status has an earlier record time: 0.
            let millis = u64::try_from(at.saturating_sub(accepted_at)).unwrap_or(0);
            metrics
                .time_to_delivered
                .with_label_values(&[channel])
                .observe(Duration::from_millis(millis).as_secs_f64());
        }
    }
}
