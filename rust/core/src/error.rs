//! The core's error type. Every message names the problem and, where there
//! is one, the expected and the actual value.

use std::fmt;

/// What went wrong; the bindings map each kind to its own Python exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// An array's shape does not match what the model or loss expects.
    Shape,
    /// A value is out of its allowed range (labels, hyper-parameters, sizes).
    Value,
    /// NaN or infinity in data, or a training loss that became non-finite.
    NonFinite,
    /// The call is not valid in the current state (e.g. backward before forward).
    State,
    /// Training was stopped by the caller (for example Ctrl-C).
    Interrupted,
    /// A file or folder does not exist.
    NotFound,
    /// Reading or writing a file failed.
    Io,
    /// An allocation would not fit in the memory available (see
    /// [`crate::memory`]), or failed.
    Memory,
}

/// An error raised by the core engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn shape(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Shape, message: message.into() }
    }
    pub fn value(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Value, message: message.into() }
    }
    pub fn non_finite(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::NonFinite, message: message.into() }
    }
    pub fn state(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::State, message: message.into() }
    }
    pub fn interrupted(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Interrupted, message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::NotFound, message: message.into() }
    }
    pub fn io(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Io, message: message.into() }
    }
    pub fn memory(message: impl Into<String>) -> Self {
        Error { kind: ErrorKind::Memory, message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Result alias used throughout the core.
pub type Result<T> = std::result::Result<T, Error>;
