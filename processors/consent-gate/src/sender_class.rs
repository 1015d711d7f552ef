//! The class of a sending identity, read from its sender key
//! (`OutboundOperation.sender_key`): egress sets a sender's default rate by
//! it, segment labels its delivery metrics with it. A metric label value,
//! never an address.

/// The kind of a sending identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SenderClass {
    /// US/CA 10-digit long code (`sms:+1…`, not toll-free).
    LongCode,
    /// North American toll-free number (`sms:+1` 800, 833, 844, 855, 866, 877, 888).
    TollFree,
    /// Short code (`sms:` followed by 5–6 digits).
    ShortCode,
    /// Messaging service (`MG…`).
    MessagingService,
    /// WhatsApp sender (`whatsapp:+…`).
    WhatsApp,
    /// Voice caller id (`voice:+…`).
    Voice,
    /// A Conversations chat participant's conversation (`chat:<conversation id>`).
    Chat,
    /// Anything else (international long codes, unknown forms).
    Other,
}

/// North American toll-free area codes.
const TOLL_FREE: [&str; 7] = ["800", "833", "844", "855", "866", "877", "888"];

impl SenderClass {
    /// The class of a sender key.
    #[must_use]
    pub fn of(sender_key: &str) -> Self {
        if sender_key.starts_with("MG") {
            return Self::MessagingService;
        }
        if sender_key.starts_with("whatsapp:") {
            return Self::WhatsApp;
        }
        if sender_key.starts_with("voice:") {
            return Self::Voice;
        }
        if sender_key.starts_with("chat:") {
            return Self::Chat;
        }
        let Some(number) = sender_key.strip_prefix("sms:") else {
            return Self::Other;
        };
        if !number.starts_with('+')
            && (5..=6).contains(&number.len())
            && number.chars().all(|c| c.is_ascii_digit())
        {
            return Self::ShortCode;
        }
        match number.strip_prefix("+1") {
            Some(rest) if rest.len() == 10 => {
                if TOLL_FREE.iter().any(|p| rest.starts_with(p)) {
                    Self::TollFree
                } else {
                    Self::LongCode
                }
            }
            _ => Self::Other,
        }
    }

    /// A metric label value (never an address).
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::LongCode => "long_code",
            Self::TollFree => "toll_free",
            Self::ShortCode => "short_code",
            Self::MessagingService => "messaging_service",
            Self::WhatsApp => "whatsapp",
            Self::Voice => "voice",
            Self::Chat => "chat",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SenderClass;

    #[test]
    fn classes_follow_the_key() {
        assert_eq!(SenderClass::of("sms:+14155550123"), SenderClass::LongCode);
        assert_eq!(SenderClass::of("sms:+18885550123"), SenderClass::TollFree);
        assert_eq!(SenderClass::of("sms:+18335550123"), SenderClass::TollFree);
        assert_eq!(SenderClass::of("sms:12345"), SenderClass::ShortCode);
        assert_eq!(SenderClass::of("sms:123456"), SenderClass::ShortCode);
        assert_eq!(SenderClass::of("sms:1234567"), SenderClass::Other);
        assert_eq!(
            SenderClass::of("MG0123456789abcdef0123456789abcdef"),
            SenderClass::MessagingService
        );
        assert_eq!(
            SenderClass::of("whatsapp:+14155550100"),
            SenderClass::WhatsApp
        );
        assert_eq!(SenderClass::of("voice:+14155550100"), SenderClass::Voice);
        assert_eq!(SenderClass::of("chat:CH0123"), SenderClass::Chat);
        assert_eq!(SenderClass::of("sms:+447700900123"), SenderClass::Other);
        assert_eq!(SenderClass::of("nonsense"), SenderClass::Other);
    }

    #[test]
    fn labels_name_no_address() {
        assert_eq!(SenderClass::of("sms:+14155550123").label(), "long_code");
        assert_eq!(SenderClass::of("chat:CH0123").label(), "chat");
        assert_eq!(SenderClass::of("MG01").label(), "messaging_service");
    }
}
