//! The WhatsApp 24-hour customer-service window.
//!
//! WhatsApp accepts free-form messages from a business only within 24 hours of
//! the user's last inbound message; outside it only an approved template goes
//! through (Twilio error 63016 otherwise). The window is `[last_inbound,
//! last_inbound + 24 h)`: at exactly 24 hours it is closed. A configurable margin
//! closes it earlier on our side, so a message still queued at egress does not
//! reach Twilio after the real close.

use std::time::Duration;

use serde::Serialize;

/// `template_reason` of a template sent because the window is closed.
pub const WINDOW_CLOSED_REASON: &str = "WHATSAPP_WINDOW_CLOSED";

/// Whether free text may be sent to a WhatsApp user now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WindowState {
    /// Free text may be sent until `closes_at_ms` (ms since the epoch; the real
    /// close, without the margin).
    Open {
        /// When WhatsApp closes the window.
        closes_at_ms: i64,
    },
    /// Only an approved template may be sent.
    Closed {
        /// The user's last inbound message, `None` when they never wrote.
        last_inbound_ms: Option<i64>,
    },
}

impl WindowState {
    /// Whether free text may be sent.
    #[must_use]
    pub const fn is_open(self) -> bool {
        matches!(self, Self::Open { .. })
    }
}

/// The window state at `now_ms` given the user's last inbound message.
///
/// A `last_inbound_ms` after `now_ms` (clock skew between instances) counts as
/// just now.
#[must_use]
pub fn whatsapp_window(
    last_inbound_ms: Option<i64>,
    now_ms: i64,
    window: Duration,
    margin: Duration,
) -> WindowState {
    let Some(last) = last_inbound_ms else {
        return WindowState::Closed {
            last_inbound_ms: None,
        };
    };
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let margin_ms = i64::try_from(margin.as_millis()).unwrap_or(i64::MAX);
    let closes_at_ms = last.saturating_add(window_ms);
    if now_ms < closes_at_ms.saturating_sub(margin_ms) {
        WindowState::Open { closes_at_ms }
    } else {
        WindowState::Closed {
            last_inbound_ms: Some(last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;
    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn boundaries() {
        let last = 1_700_000_000_000;
        let open = WindowState::Open {
            closes_at_ms: last + 24 * H,
        };
        let closed = WindowState::Closed {
            last_inbound_ms: Some(last),
        };
        assert_eq!(whatsapp_window(Some(last), last, DAY, Duration::ZERO), open);
        assert_eq!(
            whatsapp_window(Some(last), last + 24 * H - 1, DAY, Duration::ZERO),
            open
        );
        assert_eq!(
            whatsapp_window(Some(last), last + 24 * H, DAY, Duration::ZERO),
            closed
        );
        assert_eq!(
            whatsapp_window(Some(last), last + 25 * H, DAY, Duration::ZERO),
            closed
        );
        // Five minutes of margin close it five minutes early.
        let margin = Duration::from_secs(300);
        assert_eq!(
            whatsapp_window(Some(last), last + 24 * H - 300_001, DAY, margin),
            open
        );
        assert_eq!(
            whatsapp_window(Some(last), last + 24 * H - 300_000, DAY, margin),
            closed
        );
        // Clock skew: an inbound message "from the future" is just now.
        assert_eq!(
            whatsapp_window(Some(last), last - 1000, DAY, Duration::ZERO),
            open
        );
        assert_eq!(
            whatsapp_window(None, last, DAY, Duration::ZERO),
            WindowState::Closed {
                last_inbound_ms: None
            }
        );
    }
}
