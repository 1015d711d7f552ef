//! `si.identity.v1`: `schemas/avro/identity_record.avsc`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Channel;

/// What the upstream Identity Service knows about an address: the Si user it
/// belongs to. An entry of a compacted table keyed `<channel>:<E.164>`; a
/// tombstone means the address is no longer linked to a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The address in E.164 without prefix.
    pub address: String,
    /// Channel of the address.
    pub channel: Channel,
    /// Si user id the address belongs to.
    pub user_id: String,
    /// Name to address the user by, if known (personal data: never log it).
    pub display_name: Option<String>,
    /// The user's preferred locale, BCP 47.
    pub locale: Option<String>,
    /// When the Identity Service last changed this entry (ms since the epoch).
    pub updated_at: i64,
    /// Further attributes the Identity Service shares; unknown names are ignored.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

crate::avro_record!(IdentityRecord, "identity_record.avsc");

impl IdentityRecord {
    /// The Kafka key of this entry: `<channel>:<E.164>`.
    #[must_use]
    pub fn key(&self) -> String {
        self.channel.address_key(&self.address)
    }
}
