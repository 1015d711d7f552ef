//! `sictl`, the operator CLI of the Si Twilio channel, as a library so tests and
//! other tools can drive the same code.

pub mod command;
pub mod consent;
pub mod dlq;
pub mod doctor;
pub mod report;
pub mod schemas;
pub mod segment;
pub mod simulate;
pub mod tail;
pub mod topics;
pub mod topics_file;
