//! Media of simulated inbound messages, served the way Twilio serves them.
//!
//! An inbound message posted through the sandbox (`POST /_sandbox/inbound/sms`,
//! [`crate::SandboxHandle::post_inbound_sms`]) may carry `media`: each item
//! gets a Media SID and is served at
//! `GET /2010-04-01/Accounts/{AC}/Messages/{SM}/Media/{ME}` (the
//! `MediaUrl{N}` of the webhook) with its content type, behind HTTP Basic
//! auth when the sandbox's `media_auth` is on (Twilio's "enforce HTTP auth on
//! media URLs"). An item can be made to fail with a fixed status (404, 500…),
//! or only for its first fetches, to exercise retries.
//! `GET /_sandbox/media` lists every item with how often it was fetched.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// One media item of a simulated inbound message.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundMedia {
    /// The `Content-Type` it is served with (and `MediaContentType{N}`).
    pub content_type: String,
    /// The content, base64; when absent, `size` bytes derived from the SID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_base64: Option<String>,
    /// Size of generated content (default 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// Answer every fetch with this status instead (404, 500…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Answer the first `fail_first` fetches with 500, then the content.
    #[serde(default)]
    pub fail_first: u32,
}

/// A served item.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MediaRecord {
    /// `ME…`
    pub sid: String,
    /// The message it belongs to.
    pub message_sid: String,
    /// The path it is served at.
    pub path: String,
    /// Content type.
    pub content_type: String,
    /// Size of the content in bytes.
    pub size: usize,
    /// A fixed status instead of the content.
    pub status: Option<u16>,
    /// 500s still to answer before the content.
    pub fail_first: u32,
    /// Fetches so far (with valid credentials when auth is on).
    pub fetches: u32,
    /// Fetches refused for missing or wrong credentials.
    pub unauthorized: u32,
    /// Deleted (`DELETE …/Media/{ME}.json`): fetches answer 404 from then on.
    pub deleted: bool,
    #[serde(skip)]
    pub content: Vec<u8>,
}

impl MediaRecord {
    /// An item served at `path`, not fetched yet.
    fn new(
        path: String,
        sid: &str,
        message_sid: &str,
        content_type: &str,
        content: Vec<u8>,
    ) -> Self {
        Self {
            path,
            sid: sid.to_owned(),
            message_sid: message_sid.to_owned(),
            content_type: content_type.to_owned(),
            size: content.len(),
            status: None,
            fail_first: 0,
            fetches: 0,
            unauthorized: 0,
            deleted: false,
            content,
        }
    }
}

/// What a fetch gets.
#[derive(Debug)]
pub enum Served {
    /// The bytes and their type.
    Content(String, Vec<u8>),
    /// A status without content.
    Status(u16),
}

/// The media the sandbox serves, by Media SID.
#[derive(Debug, Default)]
pub struct MediaLibrary {
    items: BTreeMap<String, MediaRecord>,
}

/// Deterministic filler content: the SID's bytes repeated.
fn generated(sid: &str, size: usize) -> Vec<u8> {
    sid.bytes().cycle().take(size).collect()
}

impl MediaLibrary {
    /// Keeps `record` with the status and failures `item` asks for.
    fn insert(&mut self, record: MediaRecord, item: &InboundMedia) {
        let record = MediaRecord {
            status: item.status,
            fail_first: item.fail_first,
            ..record
        };
        self.items.insert(record.sid.clone(), record);
    }

    /// Adds the items of message `message_sid`; returns their (URL path,
    /// content type) in order.
    ///
    /// # Errors
    /// When a `content_base64` is not base64.
    pub fn add(
        &mut self,
        account_sid: &str,
        message_sid: &str,
        media: &[InboundMedia],
    ) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::with_capacity(media.len());
        for item in media {
            let sid = crate::twilio::sid("ME");
            let content = match &item.content_base64 {
                Some(b64) => STANDARD
                    .decode(b64.trim())
                    .map_err(|e| format!("media content_base64: {e}"))?,
                None => generated(&sid, item.size.unwrap_or(1024)),
            };
            let path =
                format!("/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}/Media/{sid}");
            out.push((path.clone(), item.content_type.clone()));
            let record = MediaRecord::new(path, &sid, message_sid, &item.content_type, content);
            self.insert(record, item);
        }
        Ok(out)
    }

    /// A fetch of `sid` of `message_sid`; `authorized` says whether the
    /// credentials were right (or auth is off). `None`: no such item.
    pub fn fetch(&mut self, message_sid: &str, sid: &str, authorized: bool) -> Option<Served> {
        let item = self
            .items
            .get_mut(sid)
            .filter(|i| i.message_sid == message_sid)?;
        if !authorized {
            item.unauthorized += 1;
            return Some(Served::Status(401));
        }
        item.fetches += 1;
        if item.deleted {
            return Some(Served::Status(404));
        }
        if let Some(status) = item.status {
            return Some(Served::Status(status));
        }
        if item.fail_first > 0 {
            item.fail_first -= 1;
            return Some(Served::Status(500));
        }
        Some(Served::Content(
            item.content_type.clone(),
            item.content.clone(),
        ))
    }

    /// Deletes `sid` of `message_sid` (Twilio answers 204); `None`: no such item.
    pub fn delete(&mut self, message_sid: &str, sid: &str, authorized: bool) -> Option<u16> {
        let item = self
            .items
            .get_mut(sid)
            .filter(|i| i.message_sid == message_sid)?;
        if !authorized {
            item.unauthorized += 1;
            return Some(401);
        }
        if item.deleted {
            return None;
        }
        item.deleted = true;
        Some(204)
    }

    /// Adds a call recording (`RE…`), served at
    /// `/2010-04-01/Accounts/{AC}/Recordings/{RE}` (also with `.wav`) as
    /// `audio/x-wav`, 4 KiB derived from the SID; returns the path.
    pub fn add_recording(&mut self, account_sid: &str, sid: &str) -> String {
        let path = format!("/2010-04-01/Accounts/{account_sid}/Recordings/{sid}");
        let content = generated(sid, 4096);
        let record = MediaRecord::new(path.clone(), sid, "", "audio/x-wav", content);
        self.items.entry(sid.to_owned()).or_insert(record);
        path
    }

    /// Adds Conversations media of message `message_sid` in chat service
    /// `service`, served by the Media Content Service routes
    /// (`/v1/Services/{IS}/Media/{ME}`: the JSON with
    /// `links.content_direct_temporary`; the content itself at
    /// `/_sandbox/mcs/{ME}/content`, without auth like Twilio's temporary
    /// link). Returns the `Media` webhook parameter's JSON and the SIDs.
    ///
    /// # Errors
    /// When a `content_base64` is not base64.
    pub fn add_conversation(
        &mut self,
        service: &str,
        message_sid: &str,
        media: &[InboundMedia],
    ) -> Result<(String, Vec<String>), String> {
        let mut listed = Vec::new();
        let mut sids = Vec::new();
        for item in media {
            let sid = crate::twilio::sid("ME");
            let content = match &item.content_base64 {
                Some(b64) => STANDARD
                    .decode(b64.trim())
                    .map_err(|e| format!("media content_base64: {e}"))?,
                None => generated(&sid, item.size.unwrap_or(1024)),
            };
            listed.push(serde_json::json!({
                "Sid": sid,
                "ContentType": item.content_type,
                "Filename": format!("file-{}", listed.len()),
                "Size": content.len(),
            }));
            sids.push(sid.clone());
            let path = format!("/v1/Services/{service}/Media/{sid}");
            let record = MediaRecord::new(path, &sid, message_sid, &item.content_type, content);
            self.insert(record, item);
        }
        Ok((serde_json::Value::Array(listed).to_string(), sids))
    }

    /// Stores an upload to the Media Content Service of `service` (`POST
    /// /v1/Services/{IS}/Media`): not attached to a message yet. Returns
    /// its SID.
    pub fn upload(&mut self, service: &str, content_type: &str, content: Vec<u8>) -> String {
        let sid = crate::twilio::sid("ME");
        let path = format!("/v1/Services/{service}/Media/{sid}");
        let record = MediaRecord::new(path, &sid, "", content_type, content);
        self.items.insert(sid.clone(), record);
        sid
    }

    /// The Media Content Service's JSON of `sid` (`None`: no such item).
    pub fn mcs_resource(
        &self,
        base_url: &str,
        service: &str,
        sid: &str,
    ) -> Option<serde_json::Value> {
        let item = self
            .items
            .get(sid)
            .filter(|i| i.path.starts_with("/v1/Services/"))?;
        Some(serde_json::json!({
            "sid": item.sid,
            "service_sid": service,
            "content_type": item.content_type,
            "size": item.size,
            "links": {
                "content": format!("/v1/Services/{service}/Media/{sid}/Content"),
                "content_direct_temporary": format!("{base_url}/_sandbox/mcs/{sid}/content"),
            },
        }))
    }

    /// A fetch of Conversations media content by SID (the temporary link).
    pub fn fetch_mcs_content(&mut self, sid: &str) -> Option<Served> {
        let message = self
            .items
            .get(sid)
            .filter(|i| i.path.starts_with("/v1/Services/"))?
            .message_sid
            .clone();
        self.fetch(&message, sid, true)
    }

    /// Every item, in SID order.
    #[must_use]
    pub fn list(&self) -> Vec<MediaRecord> {
        self.items.values().cloned().collect()
    }

    /// Forgets every item.
    pub fn clear(&mut self) {
        self.items.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn items_are_served_failed_and_counted() {
        let mut library = MediaLibrary::default();
        let added = library
            .add(
                "AC1",
                "MM1",
                &[
                    InboundMedia {
                        content_type: "image/png".into(),
                        content_base64: Some(STANDARD.encode(b"png!")),
                        ..InboundMedia::default()
                    },
                    InboundMedia {
                        content_type: "application/pdf".into(),
                        size: Some(10),
                        fail_first: 1,
                        ..InboundMedia::default()
                    },
                    InboundMedia {
                        content_type: "image/gif".into(),
                        status: Some(404),
                        ..InboundMedia::default()
                    },
                ],
            )
            .unwrap();
        assert_eq!(added.len(), 3);
        let sid = |i: usize| added[i].0.rsplit('/').next().unwrap().to_owned();
        assert!(
            added[0]
                .0
                .starts_with("/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME")
        );
        assert!(matches!(
            library.fetch("MM1", &sid(0), false),
            Some(Served::Status(401))
        ));
        match library.fetch("MM1", &sid(0), true) {
            Some(Served::Content(t, bytes)) => {
                assert_eq!((t.as_str(), &bytes[..]), ("image/png", &b"png!"[..]))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            library.fetch("MM1", &sid(1), true),
            Some(Served::Status(500))
        ));
        assert!(
            matches!(library.fetch("MM1", &sid(1), true), Some(Served::Content(_, b)) if b.len() == 10)
        );
        assert!(matches!(
            library.fetch("MM1", &sid(2), true),
            Some(Served::Status(404))
        ));
        assert!(library.fetch("MM2", &sid(0), true).is_none());
        let listed = library.list();
        assert_eq!(listed.iter().map(|i| i.fetches).sum::<u32>(), 4);
        assert_eq!(listed.iter().map(|i| i.unauthorized).sum::<u32>(), 1);
        assert!(
            library
                .add(
                    "AC1",
                    "MM3",
                    &[InboundMedia {
                        content_base64: Some("*".into()),
                        ..InboundMedia::default()
                    }]
                )
                .is_err()
        );
    }
}
