//! Log lines written under a subscriber of a test's own, to assert on
//! (this crate's tests and other crates').

use std::sync::{Arc, Mutex};

/// A `fmt` layer's writer that keeps every byte written.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    /// Everything written so far.
    #[must_use]
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().expect("lines").clone()).expect("UTF-8")
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lines").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
